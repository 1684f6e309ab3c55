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
from pipeline.dev.scale_state import _task_table, commit_rows
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
    # a write task Ray runs again after its files were compacted (same rows, same digest): never counted
    # again, and its new file goes at the next fold
    shard, keys = "synthetic://shard-0000002.tar", [f"0000002-{i:05d}" for i in range(20)]
    CommittedParquetSink(cfg.output, cfg.resolved_run_id()).write([_task_table(cfg.resolved_run_id(), shard, "g00001", keys)], None)
    assert len(_files(tmp_path / "out")) == 6
    st = resume.load_state(cfg)
    assert st.committed_rows == 1000
    resume.consolidate(cfg, st)
    assert len(_files(tmp_path / "out")) == 5 and set(_ids(tmp_path / "out").values()) == {1}
    assert resume.load_state(cfg).totals() == before


class Killed(BaseException):
    pass


def _duckdb_counts(glob: str, fs=None) -> Counter:
    """row_id -> copies, as DuckDB reads the hive-partitioned output through a `**/*.parquet` glob (an S3
    output through a fresh s3fs without listing cache: DuckDB's httpfs is not installed offline)."""
    import duckdb

    con = duckdb.connect()
    if fs is not None:
        con.register_filesystem(fs)
    try:
        rows = con.sql(f"SELECT row_id FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()
    except duckdb.IOException as e:  # nothing to read (yet): no row seen
        if "No files found" not in str(e):
            raise
        rows = []
    return Counter(r[0] for r in rows)


# The steps of a rewrite (pipeline/run/rewrite.py) on local disk, as (LocalFileSystem method, call that dies):
# _open 2 = the second staged file; mv 1 = the checkpoint swap (put_atomic renames); rm 1 / rm 7 = the first /
# a middle old file; mv 3 = the second staged file's move; mv 4 = the checkpoint that clears `pending`.
KILL_POINTS = {"staging": ("_open", 2), "before_swap": ("mv", 1), "after_swap": ("rm", 1), "mid_delete": ("rm", 7),
               "mid_move": ("mv", 3), "before_clear": ("mv", 4)}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_during_compaction_then_restart(tmp_path, monkeypatch, point):
    import fsspec.implementations.local as local

    out = tmp_path / "out"
    cfg = _cfg(out)
    commit_rows(cfg, 400, shard_size=100, rows_per_task=20)
    totals = _restart(cfg).totals()
    method, nth = KILL_POINTS[point]
    real = getattr(local.LocalFileSystem, method)
    calls = []

    def dies(self, path, *a, **k):
        if method != "_open" or "w" in (a[0] if a else k.get("mode", "rb")):
            calls.append(path)
            if len(calls) == nth:
                raise Killed()
        return real(self, path, *a, **k)

    monkeypatch.setattr(local.LocalFileSystem, method, dies)
    with pytest.raises(Killed):
        compact.compact(cfg, target_bytes=1 << 30)
    monkeypatch.undo()
    committed = point in ("staging", "before_swap")  # the old files are still the committed ones
    # before any restart: a globbing reader sees no row twice (and every row where the swap is not committed)
    for seen in (_ids(out), _duckdb_counts(f"{out}/**/*.parquet")):
        assert set(seen.values()) <= {1}, f"{point}: a reader sees {sum(seen.values()) - len(seen)} rows twice"
        assert len(seen) == 400 or not committed
    from pipeline.tools.dataset import open_scores

    seen = Counter(open_scores(str(out)).dataset.to_table(columns=["row_id"]).column("row_id").to_pylist())
    assert set(seen.values()) == {1} and (len(seen) == 400 or not committed)
    st = _restart(cfg)
    ids = _ids(out)
    assert len(ids) == 400 and set(ids.values()) == {1}, f"{sum(ids.values()) - len(ids)} duplicated rows"
    assert _duckdb_counts(f"{out}/**/*.parquet") == ids
    assert st.totals() == totals and not resume.load_state(cfg).pending
    assert len(_files(out)) == (20 if committed else 2)
    assert not [p for p in out.rglob("*") if p.is_file() and ".staged" in p.name]


class _Watched:
    """An fsspec filesystem whose every storage change (a file written, removed or moved) is followed by a
    reader's full read of the output: the test sees the output at each step of a compaction."""

    def __init__(self, fs, check):
        self._fs, self._check = fs, check

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def _after(self, name, *a, **k):
        r = getattr(self._fs, name)(*a, **k)
        self._check()
        return r

    def rm(self, *a, **k):
        return self._after("rm", *a, **k)

    def mv(self, *a, **k):
        return self._after("mv", *a, **k)

    def pipe_file(self, *a, **k):
        return self._after("pipe_file", *a, **k)

    def open(self, path, mode="rb", **k):
        f = self._fs.open(path, mode, **k)
        if "w" not in mode:
            return f
        check = self._check

        class _F:
            def __enter__(self):
                return f.__enter__()

            def __exit__(self, *exc):
                r = f.__exit__(*exc)
                check()
                return r
        return _F()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_readers_never_see_a_row_twice_during_compaction(tmp_path, monkeypatch, backend, request):
    """DuckDB reads the whole output after every storage change of a compaction (on local disk and moto S3):
    no row_id twice at any step; fewer rows for a moment (between the old files' removal and the moves)."""
    from pipeline.storage import StorageOptions

    if backend == "s3":
        import s3fs

        server = request.getfixturevalue("s3")
        url = f"s3://vscore-test/readers-{os.getpid()}/out"
        cfg = ScoreConfig.model_validate({"input": {"shards": "synthetic://shard-*.tar"},
                                          "output": {"path": url, "shards_per_group": 2,
                                                     "storage": StorageOptions(endpoint_url=server.endpoint_url)}})
        reader_fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint_url}, use_listings_cache=False,
                                      skip_instance_cache=True)
        glob = f"{url}/**/*.parquet"
    else:
        cfg, reader_fs, glob = _cfg(tmp_path / "out"), None, f"{tmp_path}/out/**/*.parquet"
    commit_rows(cfg, 400, shard_size=100, rows_per_task=20)  # 20 small files in 2 partition folders
    _restart(cfg)
    seen: list[int] = []

    def check():
        c = _duckdb_counts(glob, reader_fs)
        twice = sorted(r for r, n in c.items() if n > 1)
        assert not twice, f"after step {len(seen)} a reader sees {len(twice)} rows twice, e.g. {twice[:3]}"
        seen.append(len(c))

    for mod in (rewrite, resume):
        real = mod.filesystem
        monkeypatch.setattr(mod, "filesystem", lambda url, storage, _real=real: (lambda r: (_Watched(r[0], check), r[1]))(_real(url, storage)))
    check()
    assert compact.compact(cfg, target_bytes=1 << 30) == {"replaced": 20, "new": 1}
    monkeypatch.undo()
    assert len(seen) > 20 and seen[0] == 400 and seen[-1] == 400  # every step was looked at
    assert min(seen) < 400  # (the moment the moved rows are in no file: partial, never doubled)
    assert _duckdb_counts(glob, reader_fs) == Counter({r: 1 for r in _duckdb_counts(glob, reader_fs)})
    assert resume.load_state(cfg).committed_rows == 400


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
    before = _duckdb_counts(f"{out}/**/*.parquet")  # what a reader sees before the next start
    assert set(before.values()) <= {1}, f"a reader sees {sum(before.values()) - len(before)} rows twice"
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


def test_folds_compact_only_half_target_groups_the_end_packs_the_rest(tmp_path):
    """While a run goes on a group is compacted only once it holds half the target (its new file is then not
    small, so no row is rewritten twice); the end of the run packs the remainder."""
    out = tmp_path / "out"
    cfg = _cfg(out)
    commit_rows(cfg, 400, shard_size=100, rows_per_task=20)  # 20 small files in 2 partitions
    total = sum(p.stat().st_size for p in _files(out))
    assert compact.compact(cfg, _restart(cfg), target_bytes=2 * total + 2, final=False)["replaced"] == 0  # under half: not yet
    assert len(_files(out)) == 20
    r = compact.compact(cfg, _restart(cfg), target_bytes=2 * total + 2)  # the end of the run: packed all the same
    assert r["replaced"] == 20 and len(_files(out)) == 2
    ids = _ids(out)
    assert len(ids) == 400 and set(ids.values()) == {1}
    cfg2 = _cfg(tmp_path / "out2")
    commit_rows(cfg2, 400, shard_size=100, rows_per_task=20)
    r = compact.compact(cfg2, _restart(cfg2), target_bytes=2 * total, final=False)  # half the target: compacted in the run
    assert r["replaced"] == 20 and len(_files(tmp_path / "out2")) == 2


def test_compaction_reads_and_writes_in_a_ray_task_not_the_driver(ray_local, tmp_path, monkeypatch):  # noqa: F811
    """`in_ray`: the rows never enter the calling process (its file reader is broken here, the Ray worker's is
    not), the swap is committed by the caller, and every row is there once afterwards."""
    cfg = _cfg(tmp_path / "out")
    commit_rows(cfg, 300, shard_size=100, rows_per_task=20)
    totals = _restart(cfg).totals()

    def not_here(*_a, **_k):
        raise AssertionError("the driver read a file to compact it")

    monkeypatch.setattr(rewrite, "_table", not_here)
    with pytest.raises(AssertionError, match="the driver read"):
        compact.compact(cfg, _restart(cfg), target_bytes=1 << 30)  # the check can fail: in-process it reads here
    r = compact.compact(cfg, _restart(cfg), target_bytes=1 << 30, in_ray=True)
    assert r["replaced"] == 15 and len(_files(tmp_path / "out")) == 2  # 3 shards in 2 shard groups
    ids = _ids(tmp_path / "out")
    assert len(ids) == 300 and set(ids.values()) == {1}
    assert _restart(cfg).totals() == totals and not resume.load_state(cfg).pending
