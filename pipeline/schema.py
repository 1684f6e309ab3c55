"""The output schema, fixed in one place. Every run writes exactly these columns in this order.

`run_id` and `shard_group` are the default hive partition columns: Ray Data moves partition columns
into the directory names (``run_id=.../shard_group=.../*.parquet``) and readers with
``hive_partitioning``/``partitioning="hive"`` get them back as strings.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

OUTPUT_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("shard_group", pa.string(), nullable=False),
    pa.field("key", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("visual_quality", pa.int32()),
    pa.field("text_alignment", pa.int32()),
    pa.field("physical_consistency", pa.int32()),
    pa.field("visual_quality_soft", pa.float64()),
    pa.field("text_alignment_soft", pa.float64()),
    pa.field("physical_consistency_soft", pa.float64()),
    pa.field("visual_quality_expected", pa.float64()),
    pa.field("text_alignment_expected", pa.float64()),
    pa.field("physical_consistency_expected", pa.float64()),
    pa.field("visual_quality_mean", pa.float64()),
    pa.field("text_alignment_mean", pa.float64()),
    pa.field("physical_consistency_mean", pa.float64()),
    pa.field("visual_quality_std", pa.float64()),
    pa.field("text_alignment_std", pa.float64()),
    pa.field("physical_consistency_std", pa.float64()),
    pa.field("num_samples", pa.int32()),
    pa.field("samples_parsed", pa.int32()),
    pa.field("rationale", pa.string()),
    pa.field("raw_output", pa.string()),
    pa.field("parse_mode", pa.string()),
    pa.field("out_of_range", pa.bool_()),
    pa.field("num_frames", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("duration_s", pa.float64()),
    # the source clip as probed (null when it was not decoded) and the cheap signals (docs/signals.md)
    pa.field("fps", pa.float64()),
    pa.field("src_width", pa.int32()),
    pa.field("src_height", pa.int32()),
    pa.field("src_frames", pa.int64()),
    pa.field("motion", pa.float64()),
    pa.field("flicker", pa.float64()),
    pa.field("blank_fraction", pa.float64()),
    pa.field("sharpness", pa.float64()),
    pa.field("phash", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("output_tokens", pa.int32()),
    pa.field("model", pa.string()),
    pa.field("template", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_stage", pa.string()),
    pa.field("error", pa.string()),
    pa.field("meta_json", pa.string()),
    pa.field("source_url", pa.string()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("decode_s", pa.float64()),
    pa.field("score_s", pa.float64()),
    # identity of the scored clip and where its scores came from (pipeline/stages/score_cache.py)
    pa.field("content_hash", pa.string()),   # blake2b(video bytes, span); null when no video was read
    pa.field("duplicate_of", pa.string()),   # row_id of the row of this run whose scoring this row copies
    pa.field("from_cache", pa.bool_()),      # scores copied from the cross-run cache (cache.url)
])
COLUMNS = tuple(OUTPUT_SCHEMA.names)
ERROR_STAGES = ("read", "decode", "prompt", "engine", "parse", "write")
# `status`: ok (scored), error (error_stage says where it failed), skipped (the prefilter kept it from the engine:
# error_stage "prefilter", error = the failed condition(s)). A skipped row is neither ok nor an error.
STATUSES = ("ok", "error", "skipped")
PREFILTER_STAGE = "prefilter"
# The columns a prefilter expression may use: the probe's facts about the source clip and the signals.
# duration_s = src_frames / fps (what the frame rule samples), src_width x src_height = the coded size.
SIGNAL_COLUMNS = ("motion", "flicker", "blank_fraction", "sharpness", "phash")
PROBE_COLUMNS = ("duration_s", "fps", "src_width", "src_height", "src_frames")
PREFILTER_COLUMNS = PROBE_COLUMNS + SIGNAL_COLUMNS


def make_row_id(shard: str, key: str) -> str:
    """Deterministic id of a sample: blake2b(shard URL, key), 16 hex chars."""
    return hashlib.blake2b(f"{shard}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def make_content_hash(video: bytes, start_s: float | None = None, end_s: float | None = None) -> str:
    """blake2b of the video bytes plus the span: the identity of exactly these bytes (not of "the same
    video": a re-encode is another hash), 32 hex chars."""
    h = hashlib.blake2b(digest_size=16)
    h.update(video)
    h.update(f"\x00span:{start_s!r}:{end_s!r}".encode())
    return h.hexdigest()


def make_seed(base_seed: int, row_id: str) -> int:
    """Per-video sampling seed derived from the base seed and the row id (fits a signed 32-bit int)."""
    h = hashlib.blake2b(f"{base_seed}:{row_id}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def one_line(message: object, limit: int = 500) -> str:
    """An error message as one bounded line (exception type first)."""
    if isinstance(message, BaseException):
        msg = " ".join(str(message).split())
        text = f"{type(message).__name__}: {msg}" if msg else type(message).__name__
    else:
        text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Build a table with exactly OUTPUT_SCHEMA from row dicts (missing keys become null)."""
    return pa.Table.from_pydict({name: [r.get(name) for r in rows] for name in COLUMNS}, schema=OUTPUT_SCHEMA)
