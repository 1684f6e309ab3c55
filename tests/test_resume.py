"""Exactly-once resume for real: `vscore score` killed with SIGKILL mid-run (and, separately, a Ray
worker killed mid-run), then rerun: every row_id exactly once, nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from pipeline.config import load_config
from pipeline.run.resume import RunConflict, guard_fingerprint
from pipeline.schema import make_row_id
from pipeline.tools.pack import pack

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "videos"


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    """21 samples (the 7 bundled clips x 3 prompts) in 7 local shards of 3."""
    src = tmp_path_factory.mktemp("src")
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()]
    lines = []
    for copy in range(3):
        for r in recs:
            name = f"c{copy}_{Path(r['file']).name}"
            (src / name).write_bytes((SAMPLES / r["file"]).read_bytes())
            lines.append(json.dumps({"file": name, "prompt": f"{r['prompt']} (take {copy})"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("shards")
    pack(src, str(out), shard_size=3)
    return out


def _config(tmp: Path, model_dir: Path, shards_dir: Path, out: Path, max_new_tokens: int = 48) -> Path:
    cfg = {
        "input": {"shards": f"{shards_dir}/shard-*.tar", "samples_per_block": 1},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 1},
        "engine": {"kind": "transformers", "model": str(model_dir), "dtype": "float32", "device": "cpu",
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.5, "batch_size": 1, "batches_in_flight": 1},
        "sampling": {"max_new_tokens": max_new_tokens},
        "output": {"path": str(out), "min_rows_per_file": 1, "shards_per_group": 3},
        "ray": {"progress_bars": False, "num_cpus": 2, "object_store_memory": 268435456},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(tmp: Path) -> dict[str, str]:
    # A Ray temp dir of its own: every process of the child's local Ray carries it in its command line,
    # so the test can kill exactly those processes (never `ray stop`, which kills every Ray on the machine).
    ray_tmp = Path("/tmp") / f"vsr-{os.getpid()}-{tmp.name[-12:]}"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", RAY_TMPDIR=str(ray_tmp))
    env.pop("RAY_ADDRESS", None)
    return env


def _score(cfg: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "score", str(cfg), "--progress-every", "5"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _commits(out: Path) -> int:
    d = out / "_vscore" / "commits"
    return sum(1 for _ in d.rglob("*.json")) if d.exists() else 0


def _wait_for_commits(proc: subprocess.Popen, out: Path, n: int, timeout: float = 240) -> None:
    t0 = time.time()
    while _commits(out) < n:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() - t0 < timeout, "no progress"
        time.sleep(0.3)


ROW_CONTENT = ("status", "error_stage", "error", "raw_output", "parse_mode", "visual_quality", "text_alignment",
               "physical_consistency", "visual_quality_soft", "text_alignment_soft", "physical_consistency_soft")


def _rows(out: Path) -> list[dict]:
    return pads.dataset(str(out), format="parquet", partitioning="hive").to_table(
        columns=["row_id", "key", "shard", *ROW_CONTENT]).to_pylist()


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory, model_dir, shards_dir):
    """The same job run once without faults: what every row must hold after a kill and a rerun (seeds
    derive from row ids and batches hold one row, so each row's output is reproducible)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    cfg = _config(tmp, model_dir, shards_dir, out)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(cfg)], cwd=REPO, env=_env(tmp),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["row_id"]: r for r in _rows(out)}
    assert all(r["status"] == "ok" and r["raw_output"] for r in rows.values())
    return rows


def _assert_same_rows(out: Path, reference: dict[str, dict]) -> None:
    """Every row exactly once, each holding what the fault-free run wrote: status ok, the same output
    and scores (a healthy row that was quarantined or lost its score after a crash fails here)."""
    rows = _rows(out)
    ids = [r["row_id"] for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == set(reference)
    for r in rows:
        ref = reference[r["row_id"]]
        assert {c: r[c] for c in ROW_CONTENT} == {c: ref[c] for c in ROW_CONTENT}, r["key"]


def _expected_ids(shards_dir: Path) -> set[str]:
    import tarfile

    ids = set()
    for shard in sorted(shards_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as t:
            for key in {m.name.split(".", 1)[0] for m in t.getmembers()}:
                ids.add(make_row_id(str(shard), key))
    return ids


def _kill_group(proc: subprocess.Popen, env: dict[str, str]) -> None:
    """SIGKILL the driver, then every process of its local Ray (found by its private temp dir)."""
    import psutil

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    marker = env["RAY_TMPDIR"]
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            penv = p.info["environ"] or {}
            if marker in cmd or penv.get("RAY_TMPDIR") == marker:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.mark.slow
def test_kill_driver_then_rerun_exactly_once(tmp_path, model_dir, shards_dir, reference_rows):
    out = tmp_path / "out"
    cfg = _config(tmp_path, model_dir, shards_dir, out)
    env = _env(tmp_path)
    proc = _score(cfg, env)
    _wait_for_commits(proc, out, 3)
    _kill_group(proc, env)
    partial = _rows(out) if out.exists() else []
    expected = _expected_ids(shards_dir)
    assert 0 < len({r["row_id"] for r in partial}) < len(expected), "kill landed mid-run"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    rows = _rows(out)
    ids = [r["row_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(expected)  # exactly once
    assert set(ids) == expected  # nothing lost
    assert summary["rows_out"] == len(expected) and summary["rows_resumed"] > 0
    assert summary["rows_in"] == len(expected) and summary["errors"] == 0
    _assert_same_rows(out, reference_rows)
    # a third run has nothing to do and changes nothing
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(cfg)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(r["row_id"] for r in _rows(out)) == sorted(ids)


@pytest.mark.slow
def test_kill_ray_worker_mid_run(tmp_path, model_dir, shards_dir, reference_rows):
    """SIGKILL the scoring actor's worker process: Ray restarts it and retries; all rows exactly once."""
    import psutil

    out = tmp_path / "out"
    cfg = _config(tmp_path, model_dir, shards_dir, out)
    env = _env(tmp_path)
    proc = _score(cfg, env)
    try:
        _wait_for_commits(proc, out, 2)
        def ours(p):  # a process of this test's own Ray (its private RAY_TMPDIR), never another Ray's
            try:
                return (p.environ() or {}).get("RAY_TMPDIR") == env["RAY_TMPDIR"]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return False

        victims = [p for p in psutil.process_iter(["cmdline", "name"]) if ours(p) and (
            "ScoreStage" in " ".join(p.info["cmdline"] or []) or "ScoreStage" in (p.info["name"] or ""))]
        assert victims, "no scoring worker process found"
        for v in victims:
            v.kill()
        out_text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out_text.decode()[-4000:]
    finally:
        if proc.poll() is None:
            _kill_group(proc, env)
    ids = [r["row_id"] for r in _rows(out)]
    assert len(ids) == len(set(ids)) == len(_expected_ids(shards_dir))
    _assert_same_rows(out, reference_rows)


def test_changed_config_under_same_run_id_is_refused(tmp_path):
    base = ["input.shards=x", f"output.path={tmp_path}/o", "output.run_id=fixed"]
    guard_fingerprint(load_config(None, base))
    guard_fingerprint(load_config(None, base + ["engine.batch_size=3"]))  # throughput knob: fine
    with pytest.raises(RunConflict):
        guard_fingerprint(load_config(None, base + ["prompt.template=vs2-public"]))
    # without an explicit run id, a changed config simply gets a new run id
    a = load_config(None, ["input.shards=x", f"output.path={tmp_path}/p"])
    b = load_config(None, ["input.shards=x", f"output.path={tmp_path}/p", "sampling.temperature=0.2"])
    guard_fingerprint(a)
    guard_fingerprint(b)
    assert a.resolved_run_id() != b.resolved_run_id()
