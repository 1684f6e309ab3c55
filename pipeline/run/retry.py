"""`vscore score CONFIG --retry-errors`: score again the rows of a finished run whose status is `error` in
a retryable stage (read, decode, engine), replacing them exactly once in the output and the quarantine.

`prepare_retry` takes the failed rows out of the run's committed state in one atomic step
(`pipeline.run.rewrite`: the files holding them are rewritten without them, the checkpoint swapped, their
shards become partially committed with every other row still committed); the ordinary run that follows
reads those shards again and emits only the rows that are not committed: the failed ones. A kill at any
point leaves either the old state (the rows still committed as errors) or the new one (the rows not
committed: the next run scores them), never both and never neither.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ScoreConfig
from pipeline.run import resume
from pipeline.run.rewrite import RETRYABLE_STAGES, committed_files, rewrite
from pipeline.stages.sink import table_stats

log = logging.getLogger(__name__)

_STATS_COLUMNS = ("row_id", "shard", "status", "error_stage", "error", "parse_mode", "output_tokens", "score_s",
                  "from_cache", "duplicate_of")


def prepare_retry(cfg: ScoreConfig, stages: tuple[str, ...] = RETRYABLE_STAGES) -> dict[str, Any]:
    """Uncommit the run's retryable error rows. Returns {"rows": n, "shards": n}."""
    st = resume.load_state(cfg)
    resume.remove_uncommitted(cfg, st)
    resume.consolidate(cfg, st)
    st = resume.load_state(cfg)  # markers all folded: the checkpoint alone is the state
    if st.new_markers:
        raise RuntimeError("commit markers appeared while preparing the retry (is another run of this output going on?)")
    files = committed_files(cfg, st)
    out_root = cfg.output.path.rstrip("/").split("://", 1)[-1]
    failed: list[pa.Table] = []
    digests: set[str] = set()
    shard_ids: dict[str, list[str]] = defaultdict(list)  # every committed row of the affected shards
    tables: list[tuple[str, pa.Table]] = []
    for digest, entries in files.items():
        for fs, path, _size in entries:
            if not path.split("://", 1)[-1].startswith(out_root + "/"):
                continue  # quarantine copies: rewritten with their digest, not read for the decision
            with fs.open(path, "rb") as f:
                t = pq.read_table(f, columns=[c for c in _STATS_COLUMNS if c in pq.read_schema(f).names])
            tables.append((digest, t))
            mask = pc.and_(pc.equal(t["status"], "error"), pc.is_in(t["error_stage"], value_set=pa.array(list(stages))))
            bad = t.filter(pc.fill_null(mask, False))
            if bad.num_rows:
                failed.append(bad)
                digests.add(digest)
    if not failed:
        return {"rows": 0, "shards": 0}
    bad = pa.concat_tables(failed, promote_options="default")
    drop = set(bad.column("row_id").to_pylist())
    shards = set(bad.column("shard").to_pylist())
    for _digest, t in tables:
        for rid, sh in zip(t.column("row_id").to_pylist(), t.column("shard").to_pylist()):
            if sh in shards:
                shard_ids[sh].append(rid)
    # the shards' listings again (their manifests were folded into counts), then the state without the rows
    for sh in shards:
        ids = shard_ids[sh]
        resume.write_shard_manifest(resume.shard_manifest_dir(cfg), cfg.output.storage, sh, ids)
        st.done.pop(sh, None)
        st.partial[sh] = set(ids) - drop
    full = {c: bad.column(c) if c in bad.column_names else pa.nulls(bad.num_rows) for c in _STATS_COLUMNS}
    resume.subtract_totals(st.acc, table_stats(pa.table(full)))
    rewrite(cfg, st, files, sorted(digests), drop=drop, tag="retry")
    log.info("retry: %d error row(s) in %d shard(s) uncommitted; scoring them again", len(drop), len(shards))
    return {"rows": len(drop), "shards": len(shards)}
