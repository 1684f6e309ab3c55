"""The round trip of a manifest run (issue 11, item 5): the kept rows of `vscore filter` as a manifest with
the corpus's own columns (and optionally new WebDataset shards), ready for the next training job.

`vscore filter` writes its manifest of kept rows (row_id, shard, key, scores). For a run whose input was a
manifest, the `shard` of a row is the block of manifest rows it came from (`url#bytes=...` / `url#rows=...`),
and the run record (`<scores>/_vscore/runs/<run_id>.json`) holds how the manifest was read (`input`: columns,
format, block sizes). Here each kept block is read again with that configuration, its rows are turned into
samples exactly as the read stage did (same row ids), and the original record of every kept sample is
written out, unchanged, plus ``vscore_*`` columns: the row id, the span (``vscore_start_s``/``vscore_end_s``;
a Panda-70M row with several spans appears once per kept span) and the scores. Output format by the
extension: .parquet, .jsonl or .csv. With `shards_out`, each kept sample's video is fetched (byte limit and
retries of the run) and written as ``{n:09d}.{ext}`` + ``.json`` (the original record, the span, the scores).

Reads one block at a time; the kept row ids (one small record each) are held in memory, as `vscore filter`
itself does.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from typing import Any

from pipeline.config import VIDEO_EXTENSIONS, InputConfig, StorageOptions
from pipeline.errors import UsageError
from pipeline.spans import SpanError, is_listish, parse_list
from pipeline.stages.manifest import _fetch, _records, _samples, is_block
from pipeline.storage import filesystem

RUNS_DIR = "_vscore/runs"  # as pipeline.run.resume writes it
ADDED = "vscore_"


def manifest_run_input(scores: str, run_id: str | None, storage: StorageOptions) -> InputConfig | None:
    """The input configuration of a manifest run recorded next to its scores, or None for a shard run (or
    a dataset without run records). With several runs and no run id: UsageError."""
    fs, root = filesystem(scores, storage)
    runs_dir = f"{root.rstrip('/')}/{RUNS_DIR}"
    if not fs.exists(runs_dir):
        return None
    records = {p.rsplit("/", 1)[-1][:-5]: p for p in fs.ls(runs_dir, detail=False) if p.endswith(".json")}
    if run_id is None:
        if len(records) != 1:
            return None
        run_id = next(iter(records))
    if run_id not in records:
        return None
    rec = json.loads(fs.cat_file(records[run_id]))
    if not rec.get("input", {}).get("manifest"):
        return None
    return InputConfig.model_validate({**rec["input"], "storage": storage.model_dump()})


def _kept(kept_manifest: str, storage: StorageOptions) -> dict[str, dict[str, dict[str, Any]]]:
    """block -> row_id -> scores of the rows `vscore filter` kept."""
    import pyarrow.parquet as pq

    fs, path = filesystem(kept_manifest, storage)
    if path.lower().endswith((".parquet", ".pq")):
        with fs.open(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
    else:
        with fs.open(path, "rb") as f:
            rows = [json.loads(l) for l in f.read().splitlines() if l.strip()]
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        out[r["shard"]][r["row_id"]] = {k: v for k, v in r.items() if k not in ("shard", "key", "run_id", "out_shard")}
    return out


def _narrow(rec: dict[str, Any], j: int, icfg: InputConfig) -> dict[str, Any]:
    """The record of span `j` of a row that lists several (Panda-70M): each list column (spans, list-valued
    start/end, the parallel captions) keeps only its j-th item, in the column's own form (a list, or the
    string of one), so the written manifest lists exactly the kept clips and reads back to the same row ids."""
    c = icfg.columns
    names = [c.spans, c.start_s, c.end_s, c.prompt] + ([] if c.prompt else list(icfg.prompt_fields))
    out = dict(rec)
    for name in dict.fromkeys(n for n in names if n and n in rec and is_listish(rec[n])):
        try:
            items = parse_list(rec[name], name)
        except SpanError:
            continue
        if j < len(items):
            out[name] = [items[j]] if isinstance(rec[name], (list, tuple)) else repr([items[j]])
    return out


def _ext_of(url: str) -> str:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in VIDEO_EXTENSIONS else "mp4"


def write_source_manifest(kept_manifest: str, dest: str, icfg: InputConfig, storage: StorageOptions,
                          shards_out: str | None = None, shard_size: int = 1000) -> dict[str, Any]:
    """Write the kept rows of a manifest run with their original columns to `dest` (see module docstring).
    Returns counts: rows written, kept rows not found again in their block (the manifest changed since)."""
    lower = dest.lower()
    fmt = "parquet" if lower.endswith((".parquet", ".pq")) else "csv" if lower.endswith(".csv") else \
        "jsonl" if lower.endswith((".jsonl", ".ndjson", ".json")) else None
    if fmt is None:
        raise UsageError(f"source manifest {dest!r}: use a .parquet, .csv or .jsonl file name")
    kept = _kept(kept_manifest, storage)
    sink = None
    if shards_out:
        from pipeline.tools.filter import ShardSink

        sink = ShardSink(shards_out, storage, shard_size)
    records: list[dict[str, Any]] = []
    written = missing = fetched_errors = 0
    cache: dict[str, Any] = {}
    try:
        for block in sorted(kept):
            wanted = kept[block]
            if not is_block(block):
                missing += len(wanted)
                continue
            found: set[str] = set()
            for i, rec in _records(block, icfg):
                if isinstance(rec, str):
                    continue
                for j, s in enumerate(_samples(rec, i, block, "g", icfg)):
                    scores = wanted.get(s["row_id"])
                    if scores is None or s["row_id"] in found:
                        continue
                    found.add(s["row_id"])
                    out = _narrow(rec, j, icfg)
                    out[f"{ADDED}row_id"] = s["row_id"]
                    out[f"{ADDED}start_s"], out[f"{ADDED}end_s"] = s["start_s"], s["end_s"]
                    out.update({f"{ADDED}{k}": v for k, v in scores.items() if k != "row_id"})
                    records.append(out)
                    if sink is not None:
                        data = _fetch(s["source_url"], icfg, cache)
                        if isinstance(data, str):
                            fetched_errors += 1
                        else:
                            meta = {**rec, "vscore": {**scores, "start_s": s["start_s"], "end_s": s["end_s"]}}
                            sink.write({"__key__": f"{written:09d}", _ext_of(s["source_url"]): data,
                                        "json": json.dumps(meta, ensure_ascii=False, default=str).encode()})
                    written += 1
            missing += len(set(wanted) - found)
    finally:
        if sink is not None:
            sink.close()
    _write(records, dest, fmt, storage)
    res: dict[str, Any] = {"source_manifest": dest, "source_rows_written": written, "kept_not_found_in_manifest": missing}
    if sink is not None:
        res.update(shards_written=sink.urls, videos_not_fetched=fetched_errors)
    return res


def _write(records: list[dict[str, Any]], dest: str, fmt: str, storage: StorageOptions) -> None:
    fs, path = filesystem(dest, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist(records), f)
        return
    if fmt == "jsonl":
        with fs.open(path, "wb") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records).encode())
        return
    names = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue().encode())
