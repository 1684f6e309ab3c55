"""Replace committed files of a run atomically: `vscore score --retry-errors` (drop retryable error rows so
they are scored again) and compaction (`output.target_file_mb`: many small files -> few files near the target).

The unit is a write task's digest: every committed file is ``part-<digest>.parquet`` (one per partition, in
the output and in the quarantine table) and the run's checkpoint (`pipeline.run.resume`) lists the committed
digests. A rewrite

1. writes the new files ``part-<new digest>.parquet`` (not committed yet: a crash here leaves files that
   the next start deletes as leftovers),
2. swaps the checkpoint in one atomic write: the new digest in, the old ones out, row counts and totals
   adjusted (the commit point),
3. deletes the old files (a crash here leaves files whose digest is no longer committed: the next start
   deletes them).

Every committed row is in exactly one committed file at every instant, across kill -9 at any point.
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
from pipeline.storage import filesystem

RETRYABLE_STAGES = ("read", "decode", "engine")


def committed_files(cfg: ScoreConfig, st: resume.ResumeState) -> dict[str, list[tuple[Any, str, int]]]:
    """digest -> [(fs, path, size)] of this run's committed files, output and quarantine."""
    out: dict[str, list[tuple[Any, str, int]]] = defaultdict(list)
    for url in (cfg.output.path, quarantine_url(cfg.output)):
        fs, root = filesystem(url, cfg.output.storage)
        base = f"{root.rstrip('/')}/{partition_segment('run_id', cfg.resolved_run_id())}"
        if not fs.exists(base):
            continue
        for dirpath, _dirs, files in fs.walk(base, detail=True):
            if "/_vscore" in dirpath:
                continue
            for name, info in files.items():
                if st.is_committed_file(name):
                    out[name[5:-8]].append((fs, f"{dirpath.rstrip('/')}/{name}", int(info.get("size") or 0)))
    return out


def _table(fs: Any, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def rewrite(cfg: ScoreConfig, st: resume.ResumeState, files: dict[str, list[tuple[Any, str, int]]],
            digests: list[str], drop: set[str] | None = None, tag: str = "rw") -> str | None:
    """Rewrite every file of `digests` into one file per partition folder under a new digest, leaving out
    rows whose row_id is in `drop`; swap the checkpoint; delete the old files. Returns the new digest
    (None if nothing was left to write). `st` must be freshly loaded and consolidated (no unfolded markers)."""
    drop = drop or set()
    new = hashlib.blake2b(("\n".join(sorted(digests)) + f"\x00{tag}\x00" + "\n".join(sorted(drop))).encode(),
                          digest_size=10).hexdigest()
    by_dir: dict[tuple[int, str], list[tuple[Any, str]]] = defaultdict(list)
    for d in digests:
        for fs, path, _size in files.get(d, []):
            by_dir[(id(fs), posixpath.dirname(path))].append((fs, path))
    written = 0
    for (_, folder), items in sorted(by_dir.items(), key=lambda kv: kv[0][1]):
        fs = items[0][0]
        tables = [_table(f, p) for f, p in items]
        t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        if drop:
            t = t.filter(pc.invert(pc.is_in(t["row_id"], value_set=pa.array(sorted(drop)))))
        if t.num_rows:
            with fs.open(f"{folder}/part-{new}.parquet", "wb") as f:
                pq.write_table(t, f, compression="zstd")
            written += 1
    # the commit point: one atomic checkpoint write
    st.digests.difference_update(digests)
    st.retired.update(digests)
    if written:
        st.digests.add(new)
    resume.write_checkpoint(cfg, st)
    for d in digests:
        for fs, path, _size in files.get(d, []):
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass
    return new if written else None
