"""Re-parse ``raw_output`` of an existing scores dataset with the current parser (no GPU, streaming).

`vscore reparse IN OUT` reads IN (hive-partitioned Parquet on any fsspec URL, or one Parquet file) one
record batch at a time with ``pyarrow.dataset`` and writes OUT with exactly ``schema.OUTPUT_SCHEMA`` and
the same hive partition columns (those found in IN unless overridden), so memory stays bounded by
a few batches whatever the number of rows.

Per row:

* ``status != "ok"`` (error rows): copied unchanged.
* ``status == "ok"`` with a null ``raw_output``: copied unchanged (nothing to parse).
* ``status == "ok"`` otherwise: ``parse_output(raw_output)`` recomputes the three hard scores,
  ``parse_mode``, ``out_of_range`` and ``rationale``.
* Soft scores (``*_soft``) and expectations (``*_expected``) need the generation's digit log-probs,
  which the dataset does not store, so they cannot be recomputed. Per dimension, the stored soft and
  expected values are **kept only when the new hard score equals the old hard score** (the digit the
  official locator found is then still the digit the parser reads); otherwise both are set to null.
  A row whose hard score appears for the first time (old parse failed) therefore has null soft scores:
  rescore it if soft scores are needed.

Every other column is copied as stored. Input columns missing from the schema's current version are
filled with nulls (a non-nullable one is an error); input columns the schema does not know are dropped
with a warning.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.config import StorageOptions
from pipeline.errors import OutputExistsError, UsageError
from pipeline.tools.dataset import open_scores
from pipeline.vs2.parse import DIMENSIONS, parse_output
from pipeline.schema import OUTPUT_SCHEMA
from pipeline.storage import filesystem

log = logging.getLogger(__name__)

SUMMARY_DIR = "_vscore"  # skipped by pyarrow/duckdb dataset discovery (leading "_")
# what a reparse reads: the non-nullable columns of OUTPUT_SCHEMA and the text it parses
NEEDED = ("row_id", "run_id", "shard_group", "status", "raw_output")
_REPARSED = (*DIMENSIONS, *(f"{d}_soft" for d in DIMENSIONS), *(f"{d}_expected" for d in DIMENSIONS),
             "rationale", "parse_mode", "out_of_range")


# --------------------------------------------------------------------------- reading a scores dataset

def open_scores_dataset(url: str, storage: StorageOptions | None = None) -> tuple[pads.Dataset, list[str]]:
    """A pyarrow dataset over a scores dataset (hive directory or a single Parquet file) and the names of
    its hive partition columns, checked by pipeline.tools.dataset.open_scores (ScoresDatasetError when
    `url` is not one)."""
    sd = open_scores(url, storage)
    return sd.dataset, sd.partitions


def conform(batch: pa.RecordBatch, dropped: set[str] | None = None) -> pa.RecordBatch:
    """`batch` with exactly OUTPUT_SCHEMA's columns, order and types (missing nullable columns -> nulls)."""
    arrays = []
    names = batch.schema.names
    for field in OUTPUT_SCHEMA:
        if field.name in names:
            col = batch.column(names.index(field.name))
            if col.type != field.type:
                col = col.cast(field.type)
            arrays.append(col)
        elif field.nullable:
            arrays.append(pa.nulls(batch.num_rows, field.type))
        else:
            raise ValueError(f"input has no column {field.name!r}, which the output schema requires")
    if dropped is not None:
        extra = set(names) - set(OUTPUT_SCHEMA.names) - dropped
        if extra:
            log.warning("dropping input columns unknown to the output schema: %s", sorted(extra))
            dropped |= extra
    return pa.RecordBatch.from_arrays(arrays, schema=OUTPUT_SCHEMA)


# --------------------------------------------------------------------------- the per-batch transform

def reparse_batch(batch: pa.RecordBatch, stats: Counter | None = None, dropped: set[str] | None = None) -> pa.RecordBatch:
    """Re-parse one batch (see the module docstring for the rules). `stats` accumulates counters."""
    stats = stats if stats is not None else Counter()
    b = conform(batch, dropped)
    n = b.num_rows
    col = {name: b.column(OUTPUT_SCHEMA.names.index(name)).to_pylist() for name in ("status", "raw_output", *_REPARSED)}
    stats["rows"] += n
    for i in range(n):
        if col["status"][i] != "ok":
            stats["error_rows_kept"] += 1
            continue
        raw = col["raw_output"][i]
        if raw is None:
            stats["ok_rows_without_raw_output"] += 1
            continue
        old_hard = tuple(col[d][i] for d in DIMENSIONS)
        old_mode = col["parse_mode"][i]
        p = parse_output(raw)
        new_hard = p.as_tuple()
        stats["reparsed"] += 1
        stats[f"mode:{old_mode}->{p.parse_mode}"] += 1
        if new_hard != old_hard:
            stats["hard_changed"] += 1
        for d, old, new in zip(DIMENSIONS, old_hard, new_hard):
            col[d][i] = new
            if new != old:
                for suffix in ("_soft", "_expected"):
                    if col[d + suffix][i] is not None:
                        stats[f"nulled{suffix}"] += 1
                    col[d + suffix][i] = None
        col["parse_mode"][i] = p.parse_mode
        col["out_of_range"][i] = p.out_of_range
        col["rationale"][i] = p.rationale
    arrays = list(b.columns)
    for name in _REPARSED:
        j = OUTPUT_SCHEMA.names.index(name)
        arrays[j] = pa.array(col[name], type=OUTPUT_SCHEMA.field(name).type)
    return pa.RecordBatch.from_arrays(arrays, schema=OUTPUT_SCHEMA)


# --------------------------------------------------------------------------- the dataset transform

def _same_or_nested(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def reparse_dataset(src: str, dest: str, storage: StorageOptions | None = None, partition_cols: list[str] | None = None,
                    batch_size: int = 4096, overwrite: bool = False, max_rows_per_file: int = 1_000_000) -> dict[str, Any]:
    """Stream `src` into `dest` through `reparse_batch`. `partition_cols` None = those of `src`.
    Returns (and writes under ``dest/_vscore/``) a summary."""
    storage = storage or StorageOptions()
    t0 = time.time()
    sd = open_scores(src, storage, need=NEEDED)
    dset, in_parts = sd.dataset, sd.partitions
    parts = list(in_parts) if partition_cols is None else list(partition_cols)
    unknown = [c for c in parts if c not in OUTPUT_SCHEMA.names]
    if unknown:
        raise UsageError(f"--partition-cols: {', '.join(unknown)} not in the output schema")
    in_fs, in_path = filesystem(src, storage)
    out_fs, out_path = filesystem(dest, storage)
    if type(in_fs) is type(out_fs) and _same_or_nested(in_fs._strip_protocol(in_path), out_fs._strip_protocol(out_path)):
        raise UsageError(f"OUT ({dest}) must not be IN ({src}) or inside it (or contain it)")
    if out_fs.exists(out_path):
        if out_fs.isfile(out_path) or out_fs.ls(out_path):
            if not overwrite:
                raise OutputExistsError(f"{dest} exists and is not empty (use --overwrite to replace it)")
            out_fs.rm(out_path, recursive=True)
    out_fs.makedirs(out_path, exist_ok=True)

    stats: Counter = Counter()
    dropped: set[str] = set()
    files: list[str] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in dset.to_batches(batch_size=batch_size, batch_readahead=1, fragment_readahead=1):
            if batch.num_rows:
                stats["batches"] += 1
                yield reparse_batch(batch, stats, dropped)

    partitioning = (pads.partitioning(pa.schema([OUTPUT_SCHEMA.field(c) for c in parts]), flavor="hive")
                    if parts else None)
    pads.write_dataset(
        batches(), out_path, schema=OUTPUT_SCHEMA, format="parquet", partitioning=partitioning,
        filesystem=PyFileSystem(FSSpecHandler(out_fs)), basename_template="part-{i}.parquet",
        existing_data_behavior="overwrite_or_ignore", max_open_files=64, max_rows_per_file=max_rows_per_file,
        max_rows_per_group=max(1, min(batch_size, max_rows_per_file)),
        file_visitor=lambda wf: files.append(wf.path))
    summary = {
        "input": src, "output": dest, "partition_cols": parts, "files_written": len(files),
        "rows": stats["rows"], "reparsed": stats["reparsed"], "error_rows_kept": stats["error_rows_kept"],
        "ok_rows_without_raw_output": stats["ok_rows_without_raw_output"], "hard_changed": stats["hard_changed"],
        "soft_nulled": stats["nulled_soft"], "expected_nulled": stats["nulled_expected"],
        "mode_transitions": {k[5:]: v for k, v in sorted(stats.items()) if k.startswith("mode:")},
        "dropped_columns": sorted(dropped), "wall_s": round(time.time() - t0, 3),
    }
    out_fs.makedirs(f"{out_path.rstrip('/')}/{SUMMARY_DIR}", exist_ok=True)
    with out_fs.open(f"{out_path.rstrip('/')}/{SUMMARY_DIR}/reparse-summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary
