"""Engine faults: a scoring actor that dies is restarted by Ray and its batch retried; a sample that
kills the engine twice alone is quarantined as an error row instead of looping forever; an engine that
reports itself dead takes its actor down and the batch is retried on a fresh one; leftovers of an
interrupted run are deleted before a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import ScoreConfig
from pipeline.run.job import run
from pipeline.tools.pack import pack

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def test_poison_sample_quarantined(ray_local, tmp_path):  # noqa: F811
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:5]
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i, r in enumerate(recs):
        name = f"v{i}.mp4"
        (src / name).write_bytes((SAMPLES / r["file"]).read_bytes())
        lines.append(json.dumps({"file": name, "prompt": ("POISON " if i == 2 else "") + r["prompt"]}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=5)
    out = tmp_path / "out"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/*.tar", "samples_per_block": 5},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 5, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"crash_on": "POISON"},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 5, "batches_in_flight": 1,
                   "max_restarts": 3, "max_task_retries": 3},
        "output": {"path": str(out), "min_rows_per_file": 5},
        "ray": {"progress_bars": False},
    })
    summary = run(cfg, progress_every_s=60)
    rows = {r["key"]: r for r in pads.dataset(str(out), format="parquet", partitioning="hive").to_table().to_pylist()}
    assert len(rows) == 5
    assert rows["v2"]["status"] == "error" and rows["v2"]["error_stage"] == "engine"
    assert "died 2 times while scoring this sample alone" in rows["v2"]["error"]
    assert all(rows[f"v{i}"]["status"] == "ok" and rows[f"v{i}"]["parse_mode"] == "strict" for i in (0, 1, 3, 4))
    assert summary["errors_by_stage"] == {"engine": 1}
    q = pads.dataset(summary["quarantine"], format="parquet", partitioning="hive").to_table().to_pylist()
    assert [r["key"] for r in q] == ["v2"]
    assert not (out / "_vscore" / "inflight" / summary["run_id"]).exists()  # markers cleared at the end


def _fixed_cfg(tmp_path: Path, n: int, engine_kwargs: dict, corrupt: bool = False) -> ScoreConfig:
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:n]
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i, r in enumerate(recs):
        (src / f"v{i}.mp4").write_bytes((SAMPLES / r["file"]).read_bytes())
        lines.append(json.dumps({"file": f"v{i}.mp4", "prompt": r["prompt"]}))
    if corrupt:
        (src / "bad.mp4").write_bytes(b"not a video at all" * 10)
        lines.append(json.dumps({"file": "bad.mp4", "prompt": "broken"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=n + 1)
    return ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/*.tar", "samples_per_block": n + 1},
        "decode": {"actors": 1, "num_cpus": 0.5, "batch_size": n + 1, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": engine_kwargs,
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": n + 1, "batches_in_flight": 1},
        "output": {"path": str(tmp_path / "out"), "min_rows_per_file": n + 1},
        "ray": {"progress_bars": False},
    })


def _all_rows(path) -> list[dict]:
    return pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


def test_dead_engine_restarts_actor_and_retries(ray_local, tmp_path):  # noqa: F811
    """EngineDeadError (vLLM's signal that its engine core is gone) -> the actor exits -> Ray restarts it
    (a second engine start) -> the batch is retried: every row ok with its scores, nothing quarantined."""
    flag = tmp_path / "dead"
    cfg = _fixed_cfg(tmp_path, 4, {"dead_once": str(flag)})
    summary = run(cfg, progress_every_s=60)
    assert flag.exists(), "the engine never reported itself dead"
    starts = (tmp_path / "dead.starts").read_text().split()
    assert len(starts) >= 2 and starts[0] == flag.read_text()  # the first engine died; a new process took over
    rows = _all_rows(tmp_path / "out")
    assert len(rows) == 4 and summary["errors"] == 0
    assert all(r["status"] == "ok" and r["parse_mode"] == "strict" and r["visual_quality"] == 3 for r in rows)


def test_rerun_removes_uncommitted_leftovers(ray_local, tmp_path):  # noqa: F811
    """Files of this run that no commit marker names (a killed run's partial writes, in the output and in the
    quarantine) are deleted before a rerun; committed files and other runs' files stay; no row doubles."""
    import shutil

    cfg = _fixed_cfg(tmp_path, 3, {}, corrupt=True)
    first = run(cfg, progress_every_s=60)
    assert first["rows_out"] == 4 and first["errors"] == 1
    out, quar = tmp_path / "out", Path(first["quarantine"])
    committed = sorted(out.rglob("part-*.parquet")) + sorted(quar.rglob("part-*.parquet"))
    assert len(committed) >= 2
    leftovers = []
    for root, src in ((out, committed[0]), (quar, sorted(quar.rglob("part-*.parquet"))[0])):
        for name in ("part-deadbeef.parquet", "part-cafef00d.parquet.tmp"):
            leftovers.append(src.parent / name)
            shutil.copy(src, leftovers[-1])
    other = out / "run_id=vs2-otherrun" / "shard_group=g00000" / "part-0.parquet"
    other.parent.mkdir(parents=True)
    shutil.copy(committed[0], other)
    again = run(cfg, progress_every_s=60)
    assert again["rows_this_invocation"] == 0 and again["rows_out"] == 4
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in committed) and other.exists()
    run_rows = [r for r in _all_rows(out) if r["run_id"] == first["run_id"]]
    assert sorted(r["key"] for r in run_rows) == ["bad", "v0", "v1", "v2"]
    assert [r["key"] for r in _all_rows(quar)] == ["bad"]
