"""Compact resume state: fully committed shards are a name and a count, row ids only for partial shards;
folding markers into the checkpoint is safe to kill at any point; the summary totals come from it."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ScoreConfig, StorageOptions
from pipeline.dev.scale_state import _task_table, commit_rows, measure_resume
from pipeline.run import resume
from pipeline.schema import make_row_id
from pipeline.stages.sink import CommittedParquetSink
from pipeline.storage import filesystem


def _cfg(out: str, storage: StorageOptions | None = None) -> ScoreConfig:
    return ScoreConfig.model_validate({"input": {"shards": "synthetic://shard-*.tar"},
                                       "output": {"path": out, "storage": (storage or StorageOptions()).model_dump(), "shards_per_group": 2}})


def _objects(cfg: ScoreConfig, sub: str) -> list[str]:
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    d = f"{root}/{sub}/{cfg.resolved_run_id()}"
    return fs.ls(d, detail=False) if fs.exists(d) else []


def test_done_shards_fold_to_counts_and_totals_hold(tmp_path):
    cfg = _cfg(str(tmp_path / "out"))
    commit_rows(cfg, 250, shard_size=100, rows_per_task=64)
    st = resume.load_state(cfg)
    assert st.done == {f"synthetic://shard-{i:07d}.tar": n for i, n in enumerate([100, 100, 50])}
    assert not st.partial and not st.shard_rows and st.committed_rows == 250 and st.new_markers == 5
    assert resume.remove_uncommitted(cfg, st) == []
    assert resume.consolidate(cfg, st) == 5 + 3  # 5 markers + 3 shard manifests folded
    assert _objects(cfg, "_vscore/commits") == [] and _objects(cfg, "_vscore/shards") == []
    again = resume.load_state(cfg)
    assert again.done == st.done and again.totals() == st.totals() and again.totals()["rows"] == 250
    assert again.totals()["parse_modes"] == {"none": 250}
    # committed files are recognised by their write task's digest; a planted leftover is not
    leftover = next((tmp_path / "out").rglob("part-*.parquet")).with_name("part-deadbeef.parquet")
    leftover.write_bytes(b"x")
    assert [p.rsplit("/", 1)[-1] for p in resume.remove_uncommitted(cfg, again)] == ["part-deadbeef.parquet"]
    assert len(list((tmp_path / "out").rglob("part-*.parquet"))) == 5


def test_partial_shard_keeps_only_its_committed_ids(tmp_path):
    cfg = _cfg(str(tmp_path / "out"))
    run_id = cfg.resolved_run_id()
    sink = CommittedParquetSink(cfg.output, run_id)
    a, b = "synthetic://shard-a.tar", "synthetic://shard-b.tar"
    keys = [f"k{i}" for i in range(10)]
    # one write task spanning both shards: all of a, 4 of b's 10 rows
    import pyarrow as pa
    sink.write([pa.concat_tables([_task_table(run_id, a, "g00000", keys), _task_table(run_id, b, "g00000", keys[:4])])], None)
    for s in (a, b):
        resume.write_shard_manifest(resume.shard_manifest_dir(cfg), cfg.output.storage, s, [make_row_id(s, k) for k in keys])
    st = resume.load_state(cfg)
    assert st.done == {a: 10} and set(st.partial) == {b}
    assert st.committed_by_shard == {b: sorted(make_row_id(b, k) for k in keys[:4])}
    resume.consolidate(cfg, st)
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    record = json.loads(fs.cat(resume.state_path(root, run_id)))
    assert record["done"] == {a: 10} and list(record["partial"]) == [b] and len(record["partial"][b]) == 4
    # b's manifest stays (b is not done); a's is folded
    assert [p.rsplit("/", 1)[-1] for p in _objects(cfg, "_vscore/shards")] == [resume.shard_manifest_name(b)]
    # the rest of b commits: b becomes done at the next load
    sink.write([_task_table(run_id, b, "g00000", keys[4:])], None)
    st2 = resume.load_state(cfg)
    assert st2.done == {a: 10, b: 10} and not st2.partial and st2.committed_rows == 20


def test_kill_between_checkpoint_and_deletes_counts_nothing_twice(tmp_path, monkeypatch):
    cfg = _cfg(str(tmp_path / "out"))
    commit_rows(cfg, 300, shard_size=100, rows_per_task=50)
    st = resume.load_state(cfg)
    fs, _ = filesystem(cfg.output.path, cfg.output.storage)

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed()

    monkeypatch.setattr(type(fs), "rm", die)  # the checkpoint is written, then the process dies
    with pytest.raises(Killed):
        resume.consolidate(cfg, st)
    monkeypatch.undo()
    again = resume.load_state(cfg)  # markers still there, but their digests are in the checkpoint
    assert again.committed_rows == 300 and again.new_markers == 0 and len(again.done) == 3
    assert len(again.folded_paths) == 6 + 3
    resume.consolidate(cfg, again)
    assert resume.load_state(cfg).totals() == st.totals()
    # a checkpoint write killed half-way never exists: the old view (markers) stays whole
    cfg2 = _cfg(str(tmp_path / "out2"))
    commit_rows(cfg2, 100, shard_size=100, rows_per_task=50)
    monkeypatch.setattr(resume, "_put_atomic", die)
    with pytest.raises(Killed):
        resume.consolidate(cfg2, resume.load_state(cfg2))
    monkeypatch.undo()
    assert resume.load_state(cfg2).committed_rows == 100


def test_compact_state_on_s3(s3):  # noqa: F811
    cfg = _cfg("s3://vscore-test/compact/out", StorageOptions(endpoint_url=s3.endpoint_url))
    commit_rows(cfg, 300, shard_size=100, rows_per_task=64)
    r = measure_resume(cfg)
    assert r["committed_rows"] == 300 and r["done_shards"] == 3 and r["objects_folded"] == 6 + 3
    assert _objects(cfg, "_vscore/commits") == []
    r2 = measure_resume(cfg)
    assert r2["committed_rows"] == 300 and r2["objects_folded"] == 0
    # the leftover scan keeps no listing of the run's data folders (s3fs caches listings: ~1.4 KB per object,
    # +228 MB at 160,000 files before this was dropped)
    from pipeline.storage import filesystem

    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    # (only this test's folders: the filesystem instance is shared with earlier tests of the same process)
    assert not [k for k in fs.dircache if k.startswith(root.rstrip("/") + "/") and "/run_id=" in k]
