"""Replace committed files of a run atomically: `vscore score --retry-errors` (drop retryable error rows so
they are scored again) and compaction (`output.target_file_mb`: many small files -> few files near the target).

The unit is a write task's digest: every committed file is ``part-<digest>.parquet`` (one per partition, in
the output and in the quarantine table) and the run's checkpoint (`pipeline.run.resume`) lists the committed
digests. A rewrite

1. stages the new files under the table's ``_vscore/staging/<run>/`` as ``*.parquet.staged``, where no
   reader of the table looks (Spark, Trino, Hive and pyarrow skip `_` folders; DuckDB's ``**/*.parquet``
   enters them but does not match the suffix); a crash here leaves staged files the next start deletes;
2. swaps the checkpoint in one atomic write (the commit point): the new digest in, the old ones out, row
   counts and totals adjusted, and the roll-forward recorded as `pending` (old files, staged -> final);
3. rolls forward (`resume.finish_pending`, also run by every start): deletes the old files, then moves the
   staged files into the partition folders, then drops `pending` from the checkpoint.

Across kill -9 at any point, every committed row is in exactly one committed file once the next start has
run; and at every instant a reader that globs the table sees each row at most once (during step 3, for a
moment, the rows being moved are in no file it reads: a running job's output is partial anyway).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ScoreConfig
from pipeline.run import resume
from pipeline.stages.sink import partition_segment, quarantine_url
from pipeline.storage import drop_listings, filesystem, with_protocol

RETRYABLE_STAGES = ("read", "decode", "engine")
REWRITE_NUM_CPUS = 0.1  # mostly waiting on storage; like the write tasks


def committed_files(cfg: ScoreConfig, st: resume.ResumeState) -> dict[str, list[tuple[Any, str, int]]]:
    """digest -> [(fs, path, size)] of this run's committed files, output and quarantine."""
    out: dict[str, list[tuple[Any, str, int]]] = defaultdict(list)
    for url in (cfg.output.path, quarantine_url(cfg.output)):
        fs, root = filesystem(url, cfg.output.storage)
        base = f"{root.rstrip('/')}/{partition_segment('run_id', cfg.resolved_run_id())}"
        drop_listings(fs, base)  # write tasks in other processes commit files after an earlier fold listed a folder
        if not fs.exists(base):
            continue
        for dirpath, _dirs, files in fs.walk(base, detail=True):
            fs.invalidate_cache(dirpath)  # never keep the listing (s3fs: ~1.4 KB per object)
            if "/_vscore" in dirpath:
                continue
            for name, info in files.items():
                if st.is_committed_file(name):
                    out[name[5:-8]].append((fs, f"{dirpath.rstrip('/')}/{name}", int(info.get("size") or 0)))
    return out


def _table(fs: Any, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def stage(storage: Any, folders: list[tuple[str, list[str]]], staged: list[str], drop: list[str]) -> list[bool]:
    """The data work of a rewrite: for each partition folder, read its files (URLs), leave out the `drop` row
    ids, write what is left to the matching `staged` URL. Returns, per folder, whether a file was staged (a
    folder whose rows were all dropped stages nothing). Runs in a Ray task when asked to (`_stage_anywhere`)."""
    drop_ids = pa.array(sorted(drop), type=pa.string()) if drop else None
    wrote: list[bool] = []
    for (_folder, urls), dest in zip(folders, staged):
        tables = []
        for url in urls:
            fs, path = filesystem(url, storage)
            tables.append(_table(fs, path))
        t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        del tables
        if drop_ids is not None:
            t = t.filter(pc.invert(pc.is_in(t["row_id"], value_set=drop_ids)))
        if t.num_rows:
            fs, path = filesystem(dest, storage)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                pq.write_table(t, f, compression="zstd")
        wrote.append(bool(t.num_rows))
    return wrote


def _stage_anywhere(storage: Any, folders: list[tuple[str, list[str]]], staged: list[str], drop: list[str],
                    in_ray: bool) -> list[bool]:
    """`stage` in a Ray task when `in_ray` (a running job's driver: it only plans and commits, the files' rows
    never enter its memory, which would otherwise keep the high-water mark of the largest group it compacted),
    in this process otherwise (`vscore score --retry-errors` before Ray starts, a run with nothing left to score,
    tests of the protocol). `max_calls=1`: the worker exits after the task, so its Arrow buffers go back to the
    OS instead of staying in a pooled worker."""
    if not in_ray:
        return stage(storage, folders, staged, drop)
    import ray

    task = ray.remote(num_cpus=REWRITE_NUM_CPUS, max_calls=1, max_retries=3)(stage)
    return ray.get(task.remote(storage, folders, staged, drop))


def rewrite(cfg: ScoreConfig, st: resume.ResumeState, files: dict[str, list[tuple[Any, str, int]]],
            digests: list[str], drop: set[str] | None = None, tag: str = "rw", in_ray: bool = False) -> str | None:
    """Rewrite every file of `digests` into one file per partition folder under a new digest, leaving out
    rows whose row_id is in `drop`: stage (in a Ray task when `in_ray`), swap the checkpoint, roll forward
    (module doc). Returns the new digest (None if nothing was left to write). `st` must be freshly loaded and
    consolidated (no unfolded markers)."""
    drop = drop or set()
    new = hashlib.blake2b(("\n".join(sorted(digests)) + f"\x00{tag}\x00" + "\n".join(sorted(drop))).encode(),
                          digest_size=10).hexdigest()
    by_dir: dict[tuple[int, str], list[tuple[Any, str]]] = defaultdict(list)
    for d in digests:
        for fs, path, _size in files.get(d, []):
            by_dir[(id(fs), posixpath.dirname(path))].append((fs, path))
    roots = sorted(((filesystem(u, cfg.output.storage)[1].rstrip("/"), u) for u in (cfg.output.path, quarantine_url(cfg.output))),
                   key=lambda r: -len(r[0]))
    folders: list[tuple[str, list[str]]] = []
    staged: list[str] = []
    finals: list[str] = []
    for (_, folder), items in sorted(by_dir.items(), key=lambda kv: kv[0][1]):
        fs = items[0][0]
        root = next(r for r, _u in roots if folder.startswith(r + "/"))
        folders.append((folder, [with_protocol(f, p) for f, p in items]))
        staged.append(with_protocol(fs, f"{resume.staging_dir(root, cfg.resolved_run_id())}/{new}-{len(staged)}.parquet.staged"))
        finals.append(with_protocol(fs, f"{folder}/part-{new}.parquet"))
    wrote = _stage_anywhere(cfg.output.storage, folders, staged, sorted(drop), in_ray)
    moves = [[s, f] for s, f, w in zip(staged, finals, wrote) if w]
    # the commit point: one atomic checkpoint write, the roll-forward recorded in it
    st.digests.difference_update(digests)
    st.retired.update(digests)
    if moves:
        st.digests.add(new)
    old = [with_protocol(fs, path) for d in digests for fs, path, _size in files.get(d, [])]
    st.pending[new] = {"old": old, "moves": moves}
    resume.write_checkpoint(cfg, st)
    resume.finish_pending(cfg, st)
    return new if moves else None
