"""`vscore filter SCORES OUT --where EXPR`: keep the samples whose scores satisfy an expression.

The expression is SQL over the scores dataset's columns, evaluated by DuckDB, never by Python's eval (the
checker is `pipeline/expr.py`, shared with `prefilter.where`):

* it is parsed by DuckDB inside ``SELECT * FROM scores WHERE (<expr>)`` and that must be exactly one
  statement (a ``;`` cannot smuggle in a second one);
* the parse tree (DuckDB's ``json_serialize_sql``) must be that plain SELECT and nothing else (no
  UNION, ORDER BY, LIMIT, CTE... reached by closing the parenthesis or commenting out the rest), and
  the WHERE tree may hold only column references to the dataset's columns, constants, comparisons,
  AND/OR/NOT, IN, BETWEEN, IS [NOT] NULL, CASE, casts and a short list of scalar functions: no
  subqueries, no table functions, no window or aggregate functions;
* what runs is DuckDB's own rendering of that checked tree (``json_deserialize_sql``), not the raw
  text, on a connection opened with ``enable_external_access=false``, which DuckDB refuses to turn back
  on: even a function that slipped through could not read or write a file or a URL.

Outputs: (a) a manifest of the kept samples (row_id, run_id, shard, key, scores; Parquet or JSON lines
by the extension of OUT) and (b) optionally, with ``--shards-out``, new WebDataset shards holding only
the kept samples, every member byte-for-byte except the ``.json``, which gains a ``"vscore"`` object
with the scores. Shards stream from storage to storage (fsspec, S3 included): each source shard is
read once, front to back, one sample in memory at a time. Counts kept/dropped are reported overall,
per top-level condition and per score dimension.
"""

from __future__ import annotations

import json
import logging
import tarfile
from typing import Any, Iterator

import pyarrow as pa

from pipeline.config import InputConfig, StorageOptions
from pipeline.errors import UsageError
from pipeline.expr import ExpressionError, compile_where, connect as _connect
from pipeline.stages.read import MAX_MEMBERS_PER_SAMPLE, SHARD_PATTERN, _split_member
from pipeline.storage import filesystem, url_under, with_protocol

log = logging.getLogger(__name__)

DIMENSIONS = ("visual_quality", "text_alignment", "physical_consistency")
SCORE_COLUMNS = tuple(f"{d}{s}" for d in DIMENSIONS for s in ("", "_soft", "_expected"))
MANIFEST_COLUMNS = ("row_id", "run_id", "shard", "key", *SCORE_COLUMNS, "parse_mode")
MANIFEST_SUFFIXES = (".parquet", ".pq", ".jsonl", ".json", ".ndjson")


# --------------------------------------------------------------------------- the dataset

def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- shards

def _samples(stream, max_sample_bytes: int) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]], str | None]]:
    """(key, members, problem) of a tar stream, grouped like pipeline.stages.read.iter_shard groups them
    (consecutive members sharing the key before the first dot of the basename), under the read stage's
    per-sample limits: members that would take a sample past `max_sample_bytes` or past
    MAX_MEMBERS_PER_SAMPLE are skipped unread and the sample carries the problem (it is not copied)."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        key: str | None = None
        members: list[tuple[tarfile.TarInfo, bytes]] = []
        problem: str | None = None
        held = count = 0
        for m in tar:
            if not m.isfile():
                continue
            k, _ = _split_member(m.name)
            if k != key:
                if key is not None:
                    yield key, members, problem
                key, members, problem, held, count = k, [], None, 0, 0
            count += 1
            if count > MAX_MEMBERS_PER_SAMPLE:
                problem = f"more than {MAX_MEMBERS_PER_SAMPLE} members"
                continue
            if held + m.size > max_sample_bytes:
                problem = f"past max_sample_bytes {max_sample_bytes}"
                continue
            f = tar.extractfile(m)
            data = f.read() if f is not None else b""
            held += len(data)
            members.append((m, data))
        if key is not None:
            yield key, members, problem


def _with_scores(members: list[tuple[tarfile.TarInfo, bytes]], key: str, scores: dict[str, Any]) -> dict[str, Any]:
    """The sample as a webdataset dict: every member unchanged except the .json, which gains
    {"vscore": scores} (a .json is added when the sample had none)."""
    sample: dict[str, Any] = {"__key__": key}
    for info, data in members:
        _, ext = _split_member(info.name)
        if ext in sample:  # the same extension twice under one key: keep the first, as readers do
            continue
        if ext == "json":
            try:
                meta = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                meta = None
            if not isinstance(meta, dict):
                meta = {"original_json": data.decode("utf-8", "replace")}
            meta["vscore"] = scores
            data = json.dumps(meta, ensure_ascii=False).encode()
        sample[ext] = data
    if "json" not in sample:
        sample["json"] = json.dumps({"vscore": scores}, ensure_ascii=False).encode()
    return sample


class ShardSink:
    """Writes samples into DEST/shard-NNNNNN.tar (webdataset.TarWriter over an fsspec file, so S3 uploads
    stream), `shard_size` samples per shard."""

    def __init__(self, dest: str, storage: StorageOptions, shard_size: int) -> None:
        self.fs, self.root = filesystem(dest, storage)
        self.fs.makedirs(self.root, exist_ok=True)
        self.shard_size = max(1, shard_size)
        self.index = -1
        self.count = 0
        self.file = None
        self.writer = None
        self.urls: list[dict[str, Any]] = []

    def _roll(self) -> None:
        import webdataset as wds

        self.close()
        self.index += 1
        path = f"{self.root.rstrip('/')}/{SHARD_PATTERN.format(index=self.index)}"
        self.file = self.fs.open(path, "wb")
        self.writer = wds.TarWriter(self.file, mtime=0.0)  # reproducible member headers
        self.urls.append({"url": with_protocol(self.fs, path), "samples": 0})
        self.count = 0

    def write(self, sample: dict[str, Any]) -> str:
        if self.writer is None or self.count >= self.shard_size:
            self._roll()
        self.writer.write(sample)
        self.count += 1
        self.urls[-1]["samples"] += 1
        return self.urls[-1]["url"]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # closes the tar stream; the fsspec file is closed (uploaded) here too
            if not self.file.closed:
                self.file.close()
            self.writer = self.file = None


# --------------------------------------------------------------------------- the command

def filter_scores(scores: str, out: str, where: str, storage: StorageOptions | None = None, shards_out: str | None = None,
                  shard_size: int = 1000, run_id: str | None = None, source_prefixes: list[str] | None = None,
                  any_source: bool = False, max_sample_bytes: int | None = None) -> dict[str, Any]:
    """Filter `scores` by `where`; write the manifest to `out` (and shards to `shards_out`). Returns the counts.

    With `shards_out`, source shards are read only under `source_prefixes` (default: the input folders the
    run recorded) unless `any_source`, and each sample under the read stage's limits (`max_sample_bytes`,
    default `input.max_sample_bytes`'s default)."""
    from pipeline.tools.dataset import open_scores

    storage = storage or StorageOptions()
    if not out.lower().endswith(MANIFEST_SUFFIXES):
        raise UsageError(f"manifest {out!r}: use a .parquet or .jsonl file name")
    sd = open_scores(scores, storage, need=("row_id", "shard", "key"), run_id=run_id)
    dset = sd.dataset
    columns = list(dset.schema.names)
    expr, conditions, used = compile_where(where, columns)
    con = _connect()
    try:
        con.register("scores_all", dset)
        runs = [run_id] if run_id is not None else sd.runs()
        if run_id is not None:
            literal = "'" + run_id.replace("'", "''") + "'"  # a value from the data itself (open_scores checked it)
            con.execute(f"CREATE TEMP VIEW scores AS SELECT * FROM scores_all WHERE run_id = {literal}")
        elif len(runs) > 1:
            raise ExpressionError(f"{scores} holds {len(runs)} runs ({', '.join(runs)}): choose one with --run-id")
        else:
            con.execute("CREATE TEMP VIEW scores AS SELECT * FROM scores_all")
        # One pass for the counts: overall, per top-level condition, per score dimension.
        dims = [d for d in DIMENSIONS if d in columns]
        aggs = ["count(*)", f"count(*) FILTER (WHERE {expr})", "count(DISTINCT row_id)"]
        aggs += [f"count(*) FILTER (WHERE {c})" for c in conditions]
        for d in dims:
            qd = _q(d)
            aggs += [f"count({qd})", f"count({qd}) FILTER (WHERE {expr})", f"avg({qd}) FILTER (WHERE {expr})",
                     f"avg({qd}) FILTER (WHERE ({expr}) IS NOT TRUE)"]
        row = con.execute(f"SELECT {', '.join(aggs)} FROM scores").fetchall()[0]
        total, kept, distinct = row[0], row[1], row[2]
        i = 3
        per_condition = []
        for c in conditions:
            per_condition.append({"condition": c, "pass": row[i], "fail": total - row[i]})
            i += 1
        per_dimension = {}
        for d in dims:
            scored, kept_scored, mean_kept, mean_dropped = row[i:i + 4]
            i += 4
            per_dimension[d] = {"scored": scored, "kept": kept_scored, "dropped": scored - kept_scored,
                                "unscored_dropped": (total - scored) - (kept - kept_scored),
                                "mean_kept": mean_kept, "mean_dropped": mean_dropped}
        # The kept rows, once, into DuckDB's memory (one per row_id), for the manifest and the shards.
        keep_cols = [c for c in MANIFEST_COLUMNS if c in columns]
        extra = [c for c in ("model", "template") if c in columns]
        con.execute(f"CREATE TEMP TABLE kept AS SELECT DISTINCT ON (row_id) {', '.join(_q(c) for c in keep_cols + extra)} "
                    f"FROM scores WHERE {expr} ORDER BY row_id")
        n_kept = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]
        summary: dict[str, Any] = {
            "scores": scores, "where": where, "where_sql": expr, "columns_used": used, "run_id": run_id or (runs[0] if runs else None),
            "rows": total, "kept": n_kept, "dropped": total - kept, "duplicate_rows": total - distinct,
            "conditions": per_condition, "dimensions": per_dimension, "manifest": out,
        }
        out_shard: dict[str, str] = {}
        if shards_out:
            sources = None if any_source else source_folders(sd, storage, runs, source_prefixes)
            limit = max_sample_bytes or InputConfig.model_fields["max_sample_bytes"].default
            summary.update(_write_shards(con, keep_cols, storage, shards_out, shard_size, out_shard, sources, limit))
        _write_manifest(con, keep_cols, out, storage, out_shard)
        return summary
    finally:
        con.close()


def _scores_of(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("run_id", "row_id", *SCORE_COLUMNS, "parse_mode", "model", "template") if k in rec}


def _write_shards(con, keep_cols: list[str], storage: StorageOptions, dest: str, shard_size: int,
                  out_shard: dict[str, str], sources: list[str] | None, max_sample_bytes: int) -> dict[str, Any]:
    """Copy the kept samples out of their source shards. A source shard is opened only when its URL lies
    under `sources` (folder URLs; None = any URL, the caller's explicit choice): the `shard` column is data,
    and a scores table must not make this tool read whatever it names."""
    shards = [r[0] for r in con.execute("SELECT DISTINCT shard FROM kept ORDER BY shard").fetchall()]
    sink = ShardSink(dest, storage, shard_size)
    written = missing = 0
    missing_keys: list[str] = []
    refused: list[str] = []
    oversize: list[str] = []
    try:
        for shard in shards:
            res = con.execute("SELECT * FROM kept WHERE shard = ?", [shard])
            names = [d[0] for d in res.description]
            wanted = {rec["key"]: rec for rec in (dict(zip(names, r)) for r in res.fetchall())}
            seen: set[str] = set()
            if sources is not None and not url_under(shard, sources):
                log.warning("not reading source shard %s: not under the run's input folders %s", shard, sources)
                refused.append(shard)
            else:
                fs, path = filesystem(shard, storage)
                try:
                    with fs.open(path, "rb") as f:
                        for key, members, problem in _samples(f, max_sample_bytes):
                            rec = wanted.get(key)
                            if rec is None or key in seen:
                                continue  # dropped sample (or a duplicate key, which the scores name key#dupN)
                            seen.add(key)
                            if problem is not None:
                                oversize.append(f"{shard}#{key}: {problem}")
                                continue
                            out_shard[rec["row_id"]] = sink.write(_with_scores(members, key, _scores_of(rec)))
                            written += 1
                except (OSError, tarfile.TarError) as e:
                    log.warning("source shard %s could not be read to the end: %s", shard, e)
            for key in wanted.keys() - seen:
                missing += 1
                if len(missing_keys) < 20:
                    missing_keys.append(f"{shard}#{key}")
    finally:
        sink.close()
    return {"shards_out": dest, "shards_written": sink.urls, "samples_written": written,
            "kept_not_in_shards": missing, "kept_not_in_shards_examples": missing_keys,
            "source_shards_refused": refused[:20], "source_shards_refused_count": len(refused),
            "kept_over_limits": len(oversize), "kept_over_limits_examples": oversize[:20]}


def source_folders(sd: Any, storage: StorageOptions, runs: list[str], given: list[str] | None) -> list[str]:
    """Where source shards may be read from: the folders given on the command line, else the input folders
    recorded by the run(s) (`_vscore/runs/<run>.json`). Neither: a UsageError that says how to choose."""
    if given:
        return sorted(given)
    from pipeline.run.resume import run_record

    found: set[str] = set()
    for run in runs:
        rec = run_record(sd.url, storage, run) if sd.root else None
        if rec is None or "input_prefixes" not in rec:
            raise UsageError(f"{sd.url}: no record of where run {run!r} read its shards; name the source folders "
                             "with --source-prefix URL (repeatable) or allow any URL with --any-source")
        found.update(rec["input_prefixes"])
    return sorted(found)


def _write_manifest(con, keep_cols: list[str], out: str, storage: StorageOptions, out_shard: dict[str, str]) -> None:
    import pyarrow.parquet as pq

    table: pa.Table = con.sql(f"SELECT {', '.join(_q(c) for c in keep_cols)} FROM kept ORDER BY shard, key").to_arrow_table()
    if out_shard:
        table = table.append_column("out_shard", pa.array([out_shard.get(r) for r in table.column("row_id").to_pylist()], pa.string()))
    fs, path = filesystem(out, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    lower = path.lower()
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
    elif lower.endswith(".jsonl") or lower.endswith(".json") or lower.endswith(".ndjson"):
        with fs.open(path, "wb") as f:
            for batch in table.to_batches(max_chunksize=4096):
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch.to_pylist()).encode())
    else:
        raise UsageError(f"manifest {out!r}: use a .parquet or .jsonl file name")


def format_summary(s: dict[str, Any]) -> str:
    def pct(a: int, b: int) -> str:
        return f"{100.0 * a / b:.1f}%" if b else "–"

    lines = [f"where {s['where_sql']}", f"rows {s['rows']}: kept {s['kept']} ({pct(s['kept'], s['rows'])}), dropped {s['dropped']}"]
    if s.get("duplicate_rows"):
        lines.append(f"  ({s['duplicate_rows']} duplicate row ids kept once)")
    lines.append("per condition (each on its own):")
    for c in s["conditions"]:
        lines.append(f"  {c['condition']}: pass {c['pass']}, fail {c['fail']}")
    lines.append("per dimension (rows with that score):")
    for d, v in s["dimensions"].items():
        mk = "–" if v["mean_kept"] is None else f"{v['mean_kept']:.2f}"
        md = "–" if v["mean_dropped"] is None else f"{v['mean_dropped']:.2f}"
        lines.append(f"  {d}: scored {v['scored']}, kept {v['kept']}, dropped {v['dropped']} "
                     f"(mean kept {mk}, dropped {md}); unscored dropped {v['unscored_dropped']}")
    lines.append(f"manifest: {s['manifest']}")
    if "shards_out" in s:
        lines.append(f"shards: {len(s['shards_written'])} written to {s['shards_out']} ({s['samples_written']} samples)"
                     + (f"; {s['kept_not_in_shards']} kept rows had no sample in their source shard" if s["kept_not_in_shards"] else ""))
    return "\n".join(lines)
