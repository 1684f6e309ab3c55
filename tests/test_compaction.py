"""Compaction: small committed files -> files near `output.target_file_mb`, atomically. A kill at any point
of it, then a rerun's start-up: every row exactly once, totals unchanged, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.config import ScoreConfig
from pipeline.dev.scale_state import commit_rows
from pipeline.run import compact, resume, rewrite
from pipeline.stages.sink import CommittedParquetSink

REPO = Path(__file__).resolve().parent.parent


def _cfg(out: Path) -> ScoreConfig:
    return ScoreConfig.model_validate({"input": {"shards": "synthetic://shard-*.tar"},
                                       "output": {"path": str(out), "shards_per_group": 2}})


def _ids(out: Path) -> Counter:
    t = pads.dataset(str(out), format="parquet", partitioning="hive").to_table(columns=["row_id"])
    return Counter(t.column("row_id").to_pylist())


def _files(out: Path) -> list[Path]:
    return sorted(out.rglob("part-*.parquet"))


def _restart(cfg: ScoreConfig) -> resume.ResumeState:
    """What the next run does first."""
    st = resume.load_state(cfg)
    resume.remove_uncommitted(cfg, st)
    resume.consolidate(cfg, st)
    return st


def test_compaction_packs_small_files_exactly_once(tmp_path):
    cfg = _cfg(tmp_path / "out")
    commit_rows(cfg, 1000, shard_size=100, rows_per_task=20)  # 50 tiny files in 5 partitions
    before = _restart(cfg).totals()
    assert len(_files(tmp_path / "out")) == 50
    r = compact.compact(cfg, target_bytes=1 << 30)
    files = _files(tmp_path / "out")
    assert r["replaced"] == 50 and len(files) == 5  # one file per partition folder (all fit the target)
    assert set(_ids(tmp_path / "out").values()) == {1} and len(_ids(tmp_path / "out")) == 1000
    st = _restart(cfg)
    assert st.totals() == before and len(st.done) == 10
    assert compact.compact(cfg, target_bytes=1 << 30)["replaced"] == 0  # nothing small left to pack
    # a write task Ray retries after its files were compacted (same digest) is never counted again
    sink_tables = list((tmp_path / "out").rglob("part-*.parquet"))
    assert sink_tables and resume.load_state(cfg).committed_rows == 1000


class Killed(BaseException):
    pass


@pytest.mark.parametrize("point", ["before_swap", "after_swap"])
def test_kill_during_compaction_then_restart(tmp_path, monkeypatch, point):
    cfg = _cfg(tmp_path / "out")
    commit_rows(cfg, 400, shard_size=100, rows_per_task=20)
    totals = _restart(cfg).totals()

    def die(*a, **k):
        raise Killed()

    if point == "before_swap":  # new files written, the checkpoint not swapped
        monkeypatch.setattr(resume, "write_checkpoint", die)
    else:  # swapped, the old files not deleted
        import fsspec.implementations.local as local

        monkeypatch.setattr(local.LocalFileSystem, "rm", die)
    with pytest.raises(Killed):
        compact.compact(cfg, target_bytes=1 << 30)
    monkeypatch.undo()
    # before any restart, a reader through vscore's opener sees every row once (the other copy is not committed)
    from pipeline.tools.dataset import open_scores

    seen = Counter(open_scores(str(tmp_path / "out")).dataset.to_table(columns=["row_id"]).column("row_id").to_pylist())
    assert len(seen) == 400 and set(seen.values()) == {1}
    st = _restart(cfg)
    ids = _ids(tmp_path / "out")
    assert len(ids) == 400 and set(ids.values()) == {1}, f"{sum(ids.values()) - len(ids)} duplicated rows"
    assert st.totals() == totals
    assert len(_files(tmp_path / "out")) == (20 if point == "before_swap" else 2)


_CHILD = """
import sys, time
import fsspec.implementations.local as local
from pipeline.config import ScoreConfig
from pipeline.run import compact
real = local.LocalFileSystem.rm
def slow(self, *a, **k):
    time.sleep(0.05)
    return real(self, *a, **k)
local.LocalFileSystem.rm = slow
real_open = local.LocalFileSystem._open
def slow_open(self, *a, **k):
    time.sleep(0.02)
    return real_open(self, *a, **k)
local.LocalFileSystem._open = slow_open
cfg = ScoreConfig.model_validate({"input": {"shards": "synthetic://shard-*.tar"}, "output": {"path": sys.argv[1], "shards_per_group": 2}})
print("start", flush=True)
compact.compact(cfg, target_bytes=int(sys.argv[2]))
print("done", flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_sigkill_during_compaction_then_restart(tmp_path, delay):
    out = tmp_path / "out"
    cfg = _cfg(out)
    commit_rows(cfg, 600, shard_size=100, rows_per_task=10)  # 60 files
    totals = _restart(cfg).totals()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(6 * 1024)], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = _restart(cfg)
    ids = _ids(out)
    assert len(ids) == 600 and set(ids.values()) == {1}
    assert st.totals() == totals and st.committed_rows == 600
    compact.compact(cfg, target_bytes=6 * 1024)  # and the compaction finishes on the next run
    assert len(_ids(out)) == 600 and set(_ids(out).values()) == {1}


def test_retired_digests_pruned_at_next_start(tmp_path):
    cfg = _cfg(tmp_path / "out")
    commit_rows(cfg, 300, shard_size=100, rows_per_task=20)
    compact.compact(cfg, target_bytes=1 << 30)
    st = _restart(cfg)
    assert len(st.retired) == 15
    resume.prune_retired(cfg, st)
    again = resume.load_state(cfg)
    assert again.retired == set() and again.committed_rows == 300 and len(again.digests) == 1
    assert len(_ids(tmp_path / "out")) == 300 and set(_ids(tmp_path / "out").values()) == {1}


def test_folds_and_compaction_while_the_run_goes_on(ray_local, tmp_path):  # noqa: F811
    """The driver folds the state and compacts every 0.2 s while write tasks commit: afterwards every row
    once (read straight from the folder), one small file per partition, the summary from the checkpoint."""
    import json as _json

    from pipeline.run.job import run
    from pipeline.tools.pack import pack

    samples = REPO / "samples" / "videos"
    recs = [_json.loads(l) for l in (samples / "manifest.jsonl").read_text().splitlines() if l.strip()]
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(12):
        r = recs[i % len(recs)]
        (src / f"v{i}.mp4").write_bytes((samples / r["file"]).read_bytes())
        lines.append(_json.dumps({"file": f"v{i}.mp4", "prompt": f"{r['prompt']} #{i}"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=3)
    out = tmp_path / "out"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/*.tar", "samples_per_block": 1},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 1, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"sleep_s": 0.2},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 1, "batches_in_flight": 1},
        "output": {"path": str(out), "min_rows_per_file": 1, "shards_per_group": 2, "state_fold_every_s": 0.2},
        "ray": {"progress_bars": False},
    })
    s = run(cfg, progress_every_s=60)
    assert s["rows_out"] == 12 and s["rows_in"] == 12 and s["ok"] == 12
    ids = _ids(out)
    assert len(ids) == 12 and set(ids.values()) == {1}
    assert len(_files(out)) == 2  # two shard groups, one compacted file each
    st = resume.load_state(cfg)
    assert len(st.done) == 4 and not st.partial and st.committed_rows == 12
