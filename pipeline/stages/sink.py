"""The sink: hive-partitioned Parquet written through a Ray Data `Datasink`, committed per write task.

Why not `Dataset.write_parquet`: it has no per-unit commit, so a killed run leaves files that cannot be
told apart from finished ones, and a rerun duplicates rows. This sink writes, for each write task:

1. the data files, ``OUT/run_id=R/shard_group=G/part-<digest>.parquet`` (partition columns live in the
   path; `digest` is a hash of the task's sorted row ids, so a retried task overwrites its own files);
2. the same rows' errors (status "error"; skipped rows are not errors) to the quarantine table (``OUT-quarantine/...``, same schema);
3. then the commit marker ``OUT/_vscore/commits/R/<digest>.json`` listing the files and row ids (per shard).

A row is committed iff a marker names it. `pipeline.run.resume` reads the markers to skip committed rows
and delete uncommitted files on the next run with the same output and run id: exactly once.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource.datasink import Datasink

from pipeline.config import OutputConfig
from pipeline.schema import OUTPUT_SCHEMA
from pipeline.stages.prefilter import skip_conditions
from pipeline.storage import filesystem, put_atomic, refused, take_retries

COMMITS_DIR = "_vscore/commits"


def quarantine_url(out: OutputConfig) -> str:
    return out.quarantine_path or out.path.rstrip("/") + "-quarantine"


def commit_dir(root: str, run_id: str) -> str:
    return f"{root.rstrip('/')}/{COMMITS_DIR}/{run_id}"


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Hive's, Spark's and pyarrow's name for a null partition value


def partition_segment(col: str, value: Any) -> str:
    """One hive path segment `col=value`, the value percent-encoded (every byte but letters, digits and
    `_.-~`), so a value is never a path: `../x` -> `..%2Fx`. pyarrow (hive flavor, segment_encoding "uri"),
    Spark and DuckDB decode it back to the value."""
    return f"{col}={HIVE_NULL if value is None else quote(str(value), safe='')}"


def _partition_path(root: str, cols: list[str], values: tuple[Any, ...], digest: str) -> str:
    parts = [partition_segment(c, v) for c, v in zip(cols, values)]
    return posixpath.join(root.rstrip("/"), *parts, f"part-{digest}.parquet")


def _write_partitioned(fs: Any, root: str, table: pa.Table, cols: list[str], digest: str) -> list[str]:
    """Write `table` split by the values of `cols`, dropping them from the files (hive layout)."""
    files = []
    if not cols:
        groups = [((), table)]
    else:
        keys = table.select(cols).group_by(cols).aggregate([]).to_pylist()
        groups = []
        for k in keys:
            mask = None
            for c in cols:
                # a null value is its own partition (Hive's default partition), never dropped by equal()
                m = pc.is_null(table[c]) if k[c] is None else pc.fill_null(pc.equal(table[c], k[c]), False)
                mask = m if mask is None else pc.and_(mask, m)
            groups.append((tuple(k[c] for c in cols), table.filter(mask)))
    for values, part in groups:
        path = _partition_path(root, cols, values, digest)
        with refused(fs, path):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fs.open(path, "wb") as f:
                pq.write_table(part.drop_columns(list(cols)), f, compression="zstd")
        files.append(path)
    return files


def table_stats(table: pa.Table) -> dict[str, Any]:
    """The counts a commit marker carries for its rows (summed by `pipeline.run.resume` into the totals)."""
    errors = table.filter(pc.equal(table["status"], "error"))
    ok = table.filter(pc.equal(table["status"], "ok"))
    modes = Counter(m or "none" for m in ok.column("parse_mode").to_pylist())
    stages = Counter(s or "unknown" for s in errors.column("error_stage").to_pylist())
    skipped = table.filter(pc.equal(table["status"], "skipped"))
    reasons = Counter(c for e in skipped.column("error").to_pylist() for c in skip_conditions(e))
    score_s = table.column("score_s")
    fc = table.column("from_cache") if "from_cache" in table.column_names else pa.nulls(table.num_rows, pa.bool_())
    dup_nulls = table.column("duplicate_of").null_count if "duplicate_of" in table.column_names else table.num_rows
    return {"rows": table.num_rows, "errors_by_stage": dict(stages), "parse_modes": dict(modes),
            "output_tokens": int(pc.sum(table["output_tokens"]).as_py() or 0),
            "skipped": skipped.num_rows, "skip_reasons": dict(reasons),
            "from_cache": int(pc.sum(pc.cast(pc.fill_null(fc, False), pa.int64())).as_py() or 0),
            "duplicates": table.num_rows - dup_nulls,
            "engine_rows": score_s.length() - score_s.null_count, "engine_s": float(pc.sum(score_s).as_py() or 0.0)}


class CommittedParquetSink(Datasink):
    def __init__(self, out: OutputConfig, run_id: str, min_rows_per_write: int | None = None) -> None:
        self.out = out
        self.run_id = run_id
        self._min_rows = min_rows_per_write
        self.result: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> int | None:
        return self._min_rows

    def get_name(self) -> str:
        return "CommittedParquet"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        tables = [pa.table(b) if not isinstance(b, pa.Table) else b for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0}
        table = pa.concat_tables([t.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA) for t in tables])
        row_ids = sorted(table.column("row_id").to_pylist())
        digest = hashlib.blake2b("\n".join(row_ids).encode(), digest_size=10).hexdigest()
        cols = list(self.out.partition_cols)
        fs, root = filesystem(self.out.path, self.out.storage)
        files = _write_partitioned(fs, root, table, cols, digest)
        errors = table.filter(pc.equal(table["status"], "error"))  # skipped rows are not errors: not quarantined
        qfiles: list[str] = []
        if errors.num_rows:
            qfs, qroot = filesystem(quarantine_url(self.out), self.out.storage)
            qfiles = _write_partitioned(qfs, qroot, errors, cols, digest)
        by_shard: dict[str, list[str]] = {}
        for rid, sh in zip(table.column("row_id").to_pylist(), table.column("shard").to_pylist()):
            by_shard.setdefault(sh, []).append(rid)
        stats = table_stats(table)
        stages = stats["errors_by_stage"]
        marker = {"run_id": self.run_id, "digest": digest, "files": files, "quarantine_files": qfiles,
                  "rows_by_shard": by_shard, **stats}
        # The marker is written last; one PUT (S3) / one file (local, via rename) makes it atomic.
        final = f"{commit_dir(root, self.run_id)}/{digest}.json"
        with refused(fs, final):
            put_atomic(fs, final, json.dumps(marker).encode())
        # retries travel with the task's result (not fire-and-forget to the stats actor): counted before the run ends
        return {"rows": table.num_rows, "errors_by_stage": dict(stages), "output_tokens": marker["output_tokens"],
                "storage_retries": take_retries()}

    def on_write_complete(self, write_result: Any) -> None:
        rows = 0
        errs: Counter[str] = Counter()
        tokens = 0
        retries: Counter[str] = Counter()
        for r in write_result.write_returns:
            rows += r.get("rows", 0)
            errs.update(r.get("errors_by_stage", {}))
            tokens += r.get("output_tokens", 0)
            retries.update(r.get("storage_retries", {}))
        self.result = {"rows_written": rows, "errors_by_stage": dict(errs), "output_tokens": tokens,
                       "storage_retries": dict(retries)}
