"""Development only: commit N synthetic rows through the real sink and state code, then time a resume.

`commit_rows` writes what a finished run of `n_rows` rows leaves behind, with the real
`CommittedParquetSink.write` (one Parquet file + commit marker per `rows_per_task` rows) and the read stage's
`write_shard_manifest` (one per shard of `shard_size` rows); `measure_resume` then runs the start-up of a
rerun (`load_state`, `remove_uncommitted`, `consolidate`) and reports its wall time and the RSS it added.
Used by tests/test_compact_state.py and `jobs/bench.py --scale`.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
from typing import Any

import pyarrow as pa

from pipeline.config import ScoreConfig
from pipeline.schema import OUTPUT_SCHEMA, make_row_id


def _rss_mb(field: str = "VmRSS") -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _task_table(run_id: str, shard: str, group: str, keys: list[str]) -> pa.Table:
    n = len(keys)
    cols: dict[str, Any] = {name: pa.nulls(n, f.type) for name, f in zip(OUTPUT_SCHEMA.names, OUTPUT_SCHEMA)}
    cols["row_id"] = pa.array([make_row_id(shard, k) for k in keys])
    cols["run_id"] = pa.array([run_id] * n)
    cols["shard_group"] = pa.array([group] * n)
    cols["key"] = pa.array(keys)
    cols["shard"] = pa.array([shard] * n)
    cols["status"] = pa.array(["ok"] * n)
    cols["visual_quality"] = pa.array([3] * n, pa.int32())
    return pa.table(cols).cast(OUTPUT_SCHEMA)


def commit_rows(cfg: ScoreConfig, n_rows: int, shard_size: int = 1000, rows_per_task: int = 64,
                consolidate_every: int = 0, shards_per_task: int = 1, progress_every: int = 0) -> dict[str, Any]:
    """Commit `n_rows` synthetic ok rows of `cfg`'s run as a finished run would. With `consolidate_every`
    > 0 the state is folded every that many shards (as the driver does at start and end of each invocation).
    `shards_per_task` > 1: one write task holds that many whole shards (`rows_per_task` unused), the shape of
    large write tasks or of an output that compaction has rewritten."""
    from pipeline.run import resume
    from pipeline.stages.sink import CommittedParquetSink

    run_id = cfg.resolved_run_id()
    resume.guard_fingerprint(cfg)
    sink = CommittedParquetSink(cfg.output, run_id)
    t0 = time.time()
    tasks = 0
    n_shards = (n_rows + shard_size - 1) // shard_size
    pending: list[pa.Table] = []
    for s in range(n_shards):
        shard = f"synthetic://shard-{s:07d}.tar"
        group = f"g{s // cfg.output.shards_per_group:05d}"
        keys = [f"{s:07d}-{i:05d}" for i in range(min(shard_size, n_rows - s * shard_size))]
        if shards_per_task > 1:
            pending.append(_task_table(run_id, shard, group, keys))
            if len(pending) == shards_per_task or s == n_shards - 1:
                sink.write([pa.concat_tables(pending)], None)
                pending = []
                tasks += 1
        else:
            for i in range(0, len(keys), rows_per_task):
                sink.write([_task_table(run_id, shard, group, keys[i:i + rows_per_task])], None)
                tasks += 1
        resume.write_shard_manifest(resume.shard_manifest_dir(cfg), cfg.output.storage, shard,
                                    [make_row_id(shard, k) for k in keys])
        if consolidate_every and (s + 1) % consolidate_every == 0:
            resume.consolidate(cfg, resume.load_state(cfg))
        if progress_every and (s + 1) % progress_every == 0:
            print(f"[commit_rows] {s + 1}/{n_shards} shards, {tasks} write tasks, {time.time() - t0:.0f} s", flush=True)
    return {"rows": n_rows, "shards": n_shards, "write_tasks": tasks, "write_s": round(time.time() - t0, 2)}


def placeholder_state(cfg: ScoreConfig, n_rows: int, shard_size: int = 1000, rows_per_task: int = 64,
                      batch: int = 2000, progress_every: int = 0) -> dict[str, Any]:
    """The state a finished, folded run of `n_rows` leaves when none of its `rows_per_task`-row write tasks
    was compacted (the worst case of the start-up), written directly rather than through the sink: the compact
    checkpoint (every shard done, one digest per write task, the totals) and one tiny placeholder object per
    committed file in its partition folder. A start-up reads the checkpoint and the files' names, never their
    contents; writing ~156,000 real write tasks through moto takes hours on a small machine."""
    from pipeline.run import resume
    from pipeline.stages.sink import _partition_path
    from pipeline.storage import filesystem

    run_id = cfg.resolved_run_id()
    resume.guard_fingerprint(cfg)
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    cols = list(cfg.output.partition_cols)
    st = resume.ResumeState()
    t0 = time.time()
    n_shards = (n_rows + shard_size - 1) // shard_size
    todo: dict[str, bytes] = {}
    tasks = 0
    for s in range(n_shards):
        rows = min(shard_size, n_rows - s * shard_size)
        shard = f"synthetic://shard-{s:07d}.tar"
        group = f"g{s // cfg.output.shards_per_group:05d}"
        st.done[shard] = rows
        for i in range(0, rows, rows_per_task):
            d = hashlib.blake2b(f"{shard}\x00{i}".encode(), digest_size=10).hexdigest()
            st.digests.add(d)
            values = tuple(run_id if c == "run_id" else group for c in cols)
            todo[_partition_path(root, cols, values, d)] = b"x"
            tasks += 1
        if len(todo) >= batch or s == n_shards - 1:
            for folder in {p.rsplit("/", 1)[0] for p in todo}:
                fs.makedirs(folder, exist_ok=True)  # (local disk; a no-op on object stores)
            fs.pipe(todo)
            todo = {}
        if progress_every and (s + 1) % progress_every == 0:
            print(f"[placeholder_state] {s + 1}/{n_shards} shards, {tasks} files, {time.time() - t0:.0f} s", flush=True)
    st.acc["rows"] = n_rows
    resume.write_checkpoint(cfg, st)
    return {"rows": n_rows, "shards": n_shards, "write_tasks": tasks, "write_s": round(time.time() - t0, 2),
            "placeholder": True}


def measure_resume(cfg: ScoreConfig, consolidate: bool = True) -> dict[str, Any]:
    """Start-up of a rerun: load the state, clean leftovers, fold markers. Wall time and added RSS."""
    from pipeline.run import resume
    from pipeline.storage import filesystem

    fs, root = filesystem(cfg.output.path, cfg.output.storage)  # the baseline: a client that has listed the empty output
    fs.exists(f"{root.rstrip('/')}/_vscore/none")
    gc.collect()
    rss0 = _rss_mb()
    t0 = time.time()
    st = resume.load_state(cfg)
    t_load = time.time() - t0
    resume.remove_uncommitted(cfg, st)
    t_clean = time.time() - t0 - t_load
    folded = resume.consolidate(cfg, st) if consolidate else 0
    wall = time.time() - t0
    rss1 = _rss_mb()
    out = {"committed_rows": st.committed_rows, "done_shards": len(st.done), "partial_shards": len(st.partial),
           "load_s": round(t_load, 3), "cleanup_s": round(t_clean, 3), "startup_s": round(wall, 3),
           "objects_folded": folded, "rss_added_mb": round(rss1 - rss0, 1), "rss_mb": round(rss1, 1),
           "rss_peak_added_mb": round(_rss_mb("VmHWM") - rss0, 1)}
    del st
    return out
