"""Manifest input: Parquet / CSV / JSONL tables of video URLs (``input.manifest``), read in blocks of rows.

A table row names its video (``input.columns.video``: any fsspec URL, or a path relative to the manifest's
folder), its prompt and optionally a key and a clip span (or a Panda-70M list of spans with parallel
captions, one sample per span). Every other column is kept in ``meta_json`` so results join back.

Streaming: the driver never reads a table whole. It makes *block descriptors*, strings that play the role of
shard URLs everywhere downstream (the ``shard`` column, shard groups, resume manifests, commit markers), so
a block is scored, committed and resumed exactly like a shard:

- Parquet: ``<url>#rows=<row group>:<start>-<end>``, from the footer only (``input.manifest_block_rows``
  rows, never across row groups);
- CSV / JSONL: ``<url>#bytes=<start>-<end>``, record-aligned byte ranges of about
  ``input.manifest_block_bytes``. JSONL boundaries are found by seeking (a record never holds a raw
  newline); CSV boundaries by one streaming pass over the bytes counting quotes (a newline inside a quoted
  field is not a boundary), constant memory. The header is re-read by each block.

A read task reads its block's byte range (or row slice), turns each row into samples, and fetches the
videos with ``input.fetch_concurrency`` concurrent requests, each bounded by ``input.max_sample_bytes``
(checked from the object's size before reading when the store reports one), with retries. Every problem
is a row: an unreadable cell (non-UTF-8 CSV), no video URL, a bad span, a 404, an unreachable host. A
block that cannot be read at all yields an error row keyed ``__shard__``, like a broken shard.

row_id = hash(video URL, span), so the same clip listed twice in a block is one row plus a ``#dup1`` error
row. (Duplicates in different blocks are not detected: that needs a global pass over the ids.)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import InputConfig
from pipeline.errors import UsageError
from pipeline.schema import make_row_id, one_line
from pipeline.spans import SpanError, is_listish, span_label
from pipeline.stages.samples import base_row, expand_spans, first_prompt, get_field, span_values
from pipeline.storage import filesystem

log = logging.getLogger(__name__)

_DESC = re.compile(r"^(?P<url>.*)#(?:rows=(?P<rg>\d+):(?P<r0>\d+)-(?P<r1>\d+)|bytes=(?P<b0>\d+)-(?P<b1>\d+))$")
_SCAN_CHUNK = 8 << 20


def manifest_format(url: str, cfg: InputConfig) -> str:
    if cfg.manifest_format != "auto":
        return cfg.manifest_format
    name = url.split("?", 1)[0].lower()
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"),
                     (".ndjson", "jsonl"), (".json", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise UsageError(f"input.manifest {url}: cannot tell the format from the name (.parquet, .csv, .jsonl); "
                     "set input.manifest_format")


def is_block(unit: str) -> bool:
    return _DESC.match(unit) is not None


def _parse_desc(unit: str) -> tuple[str, str, int, int, int]:
    m = _DESC.match(unit)
    if m is None:
        raise ValueError(f"not a manifest block: {unit}")
    if m.group("rg") is not None:
        return m.group("url"), "rows", int(m.group("rg")), int(m.group("r0")), int(m.group("r1"))
    return m.group("url"), "bytes", 0, int(m.group("b0")), int(m.group("b1"))


# -- the driver: columns check and block descriptors --------------------------------------------------------

def _really_missing(e: FileNotFoundError) -> bool:
    """fsspec's HTTP `info` turns every failure (a refused connection too) into FileNotFoundError; only a
    404 (or a local/S3 miss) is a missing object."""
    cause = e.__cause__
    return cause is None or isinstance(cause, FileNotFoundError) or getattr(cause, "status", None) == 404


def _open_manifest(url: str, cfg: InputConfig) -> tuple[Any, str, int]:
    fs, path = filesystem(url, cfg.storage)
    try:
        size = fs.size(path)
    except Exception as e:  # noqa: BLE001 - unreachable host, permissions: one line, no traceback
        if isinstance(e, FileNotFoundError) and _really_missing(e):
            raise UsageError(f"input.manifest: {url} does not exist") from None
        raise UsageError(f"input.manifest: cannot read {url}: {one_line(e.__cause__ or e, 300)}") from None
    if size is None:
        raise UsageError(f"input.manifest: {url} has no known size (the server sends no Content-Length)")
    return fs, path, int(size)


def _stream_kw(fs: Any) -> dict[str, Any]:
    """HTTP: a streaming read (no range requests: plain servers do not answer them)."""
    proto = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return {"block_size": 0} if {"http", "https"} & set(proto) else {}


def _header(fs: Any, path: str) -> tuple[list[str], int]:
    """Column names of a CSV and the byte offset where its first data record starts."""
    with fs.open(path, "rb", **_stream_kw(fs)) as f:
        head = _read_upto(f, 256 << 10)
    end = _record_end(head, 0, 0)
    if end is None:
        end = len(head)
    names = next(csv.reader([head[:end].decode("utf-8", "replace").rstrip("\r\n")]), [])
    return names, end


def _record_end(buf: bytes, start: int, quotes_before: int, quoted: bool = True) -> int | None:
    """Offset just past the first newline at or after `start` that is outside quotes, or None."""
    pos = start
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        if not quoted or (quotes_before + buf.count(b'"', 0, nl)) % 2 == 0:
            return nl + 1
        pos = nl + 1


def manifest_columns(url: str, cfg: InputConfig) -> list[str]:
    """The column names a manifest file has (Parquet schema, CSV header, keys of the first JSONL record)."""
    fmt = manifest_format(url, cfg)
    fs, path, _ = _open_manifest(url, cfg)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as f:
                return list(pq.ParquetFile(f).schema_arrow.names)
        if fmt == "csv":
            return _header(fs, path)[0]
        with fs.open(path, "rb", **_stream_kw(fs)) as f:
            head = _read_upto(f, 1 << 20)
        for line in head.splitlines():
            if line.strip():
                rec = json.loads(line)
                return list(rec) if isinstance(rec, dict) else []
        return []
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"input.manifest: cannot read the columns of {url}: {one_line(e, 300)}") from None


def check_columns(url: str, cfg: InputConfig) -> None:
    """Fail at start, in one line, when a mapped column is missing (listing the columns the file has)."""
    have = manifest_columns(url, cfg)
    present = lambda name: name in have or name.split(".", 1)[0] in have  # noqa: E731 - dotted paths reach into structs
    c = cfg.columns
    mapped = {"video": c.video, "prompt": c.prompt, "key": c.key, "start_s": c.start_s, "end_s": c.end_s, "spans": c.spans}
    missing = [f"{role}={name!r}" for role, name in mapped.items() if name and not present(name)]
    if c.prompt is None and not any(present(f) for f in cfg.prompt_fields):
        missing.append(f"prompt (none of input.prompt_fields {cfg.prompt_fields})")
    if missing:
        raise UsageError(f"input.manifest {url} has no column for {', '.join(missing)}; its columns: {', '.join(have) or '(none)'}"
                         " (map them with input.columns.video / .prompt / ...)")


def manifest_blocks(url: str, cfg: InputConfig) -> Iterator[str]:
    """The block descriptors of one manifest file, in file order (see module docstring)."""
    fmt = manifest_format(url, cfg)
    fs, path, size = _open_manifest(url, cfg)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            for start in range(0, n, cfg.manifest_block_rows):
                yield f"{url}#rows={rg}:{start}-{min(n, start + cfg.manifest_block_rows)}"
        return
    start = _header(fs, path)[1] if fmt == "csv" else 0
    yield from _scan_blocks(fs, path, url, size, start, cfg.manifest_block_bytes, quoted=fmt == "csv")


def _scan_blocks(fs: Any, path: str, url: str, size: int, start: int, block: int, quoted: bool) -> Iterator[str]:
    """Record-aligned byte ranges of about `block` bytes from `start`, by one streaming pass (constant memory;
    no seek, so it works on HTTP servers without range requests too). CSV (`quoted`): a newline inside a
    quoted field is not a boundary (an odd number of quote characters before it)."""
    target = start + block
    quotes = 0  # quote characters before `offset` (CSV)
    offset = 0
    with fs.open(path, "rb", **_stream_kw(fs)) as f:
        while offset < size and target < size:
            chunk = _read_upto(f, _SCAN_CHUNK)
            if not chunk:
                break
            while target < offset + len(chunk):
                end = _record_end(chunk, max(target - offset - 1, 0), quotes if quoted else 0, quoted)
                if end is None:
                    break
                yield f"{url}#bytes={start}-{offset + end}"
                start = offset + end
                target = start + block
            if quoted:
                quotes += chunk.count(b'"')
            offset += len(chunk)
    if start < size:
        yield f"{url}#bytes={start}-{size}"


def plan_blocks(files: list[str], cfg: InputConfig) -> list[str]:
    """The driver's work list for a manifest run: every file's columns checked (a missing one fails here, in
    one line), then its block descriptors (one small string per block: the driver holds these, never rows)."""
    if not files:
        raise UsageError(f"no manifest matches input.manifest={cfg.manifest!r}")
    # local paths made absolute here: read tasks may run in another working directory (or on another node
    # sharing the file system), and relative video paths resolve against the manifest's folder
    files = [f if "://" in f else os.path.abspath(f) for f in files]
    for url in files:
        check_columns(url, cfg)
    return [b for url in files for b in manifest_blocks(url, cfg)]


# -- a read task: one block -> rows -----------------------------------------------------------------------

def _read_upto(f: Any, n: int) -> bytes:
    """Up to `n` bytes (a streaming HTTP file returns what one chunk holds per read: loop to EOF or n)."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read_range(fs: Any, path: str, start: int, end: int) -> bytes:
    try:
        with fs.open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    except ValueError:  # an HTTP server without range requests: stream from the start and skip
        with fs.open(path, "rb", block_size=0) as f:
            skip = start
            while skip > 0:
                got = f.read(min(skip, 1 << 20))
                if not got:
                    break
                skip -= len(got)
            return _read_upto(f, end - start)


def _records(unit: str, cfg: InputConfig) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number in the block, record or a one-line reason it cannot be read)."""
    url, kind, rg, a, b = _parse_desc(unit)
    fmt = manifest_format(url, cfg)
    fs, path = filesystem(url, cfg.storage)
    if kind == "rows":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(rg).slice(a, b - a)
        yield from enumerate(table.to_pylist())
        return
    data = _read_range(fs, path, a, b)
    if fmt == "jsonl":
        for i, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except UnicodeDecodeError:
                yield i, "record is not UTF-8"
                continue
            except ValueError as e:
                yield i, f"record is not JSON: {one_line(e, 120)}"
                continue
            yield (i, rec) if isinstance(rec, dict) else (i, "record is not a JSON object")
        return
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names, _ = _header(fs, path)
    table = pcsv.read_csv(io.BytesIO(data), read_options=pcsv.ReadOptions(column_names=names),
                          parse_options=pcsv.ParseOptions(newlines_in_values=True),
                          convert_options=pcsv.ConvertOptions(column_types={n: pa.binary() for n in names}))
    for i, raw in enumerate(table.to_pylist()):
        rec: dict[str, Any] = {}
        bad = []
        for k, v in raw.items():
            try:
                rec[k] = v.decode("utf-8") if v is not None else None
            except UnicodeDecodeError:
                bad.append(k)
        yield (i, rec) if not bad else (i, f"column {', '.join(bad)} is not UTF-8")


def resolve_url(video: str, manifest_url: str) -> str:
    """A video URL as given, or a relative path resolved against the manifest's folder."""
    if "://" in video or video.startswith("/"):
        return video
    return f"{manifest_url.rsplit('/', 1)[0]}/{video}" if "/" in manifest_url else video


def _samples(rec: dict[str, Any] | str, i: int, unit: str, group: str, cfg: InputConfig) -> list[dict[str, Any]]:
    """The rows of one manifest record (one, or one per span); errors as rows."""
    url, *_ = _parse_desc(unit)
    c = cfg.columns
    if isinstance(rec, str):
        r = base_row(unit, group, f"row{i}")
        return [{**r, "status": "error", "error_stage": "read", "error": f"manifest row {i}: {rec}"}]
    video = get_field(rec, c.video)
    if not isinstance(video, str) or not video.strip():
        r = base_row(unit, group, f"row{i}")
        return [{**r, "status": "error", "error_stage": "read", "error": f"manifest row {i}: no video URL in column {c.video!r}"}]
    source = resolve_url(video.strip(), url)
    start, end, spans = span_values(rec, c, shard_defaults=False)
    listed = spans is not None or is_listish(start) or is_listish(end)
    if c.prompt:
        prompt: Any = get_field(rec, c.prompt)
    else:
        prompt = next((get_field(rec, f) for f in cfg.prompt_fields if listed and is_listish(get_field(rec, f))), None)
        prompt = prompt if prompt is not None else first_prompt(rec, cfg.prompt_fields)
    used = {n.split(".", 1)[0] for n in (c.video, c.prompt, c.key, c.start_s, c.end_s, c.spans) if n}
    meta = {k: v for k, v in rec.items() if k not in used}
    meta_json = json.dumps(meta, ensure_ascii=False, default=str) if meta else None
    key = str(get_field(rec, c.key)) if c.key and get_field(rec, c.key) is not None else source
    problems = []
    try:
        clips = expand_spans(start, end, spans, prompt)
    except SpanError as e:
        problems.append(f"bad span: {one_line(str(e), 200)}")
        clips = [(None, prompt)]
    rows = []
    for span, text in clips:
        label = span_label(span) if span is not None else ""
        r = base_row(unit, group, f"{key}@{label}" if label else key)
        r.update(row_id=make_row_id(source, label), source_url=source, meta_json=meta_json,
                 prompt=text.strip() if isinstance(text, str) and text.strip() else None)
        if span is not None:
            r["start_s"], r["end_s"] = span
        if problems:
            r.update(status="error", error_stage="read", error=one_line("; ".join(problems)))
        elif r["prompt"] is None:
            what = f"column {c.prompt!r}" if c.prompt else f"none of the columns {', '.join(cfg.prompt_fields)}"
            r.update(status="error", error_stage="read", error=f"no prompt ({what} holds a non-empty string)")
        rows.append(r)
    return rows


def _fetch(url: str, cfg: InputConfig, cache: dict[str, Any]) -> bytes | str:
    """The bytes of one video, or a one-line reason. Size checked before reading when the store knows it;
    never more than max_sample_bytes + 1 bytes read. s3 retries inside s3fs/botocore; other protocols
    (HTTP) are retried here, with backoff, `storage.retries` attempts; a missing object is not retried."""
    limit = cfg.max_sample_bytes
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    attempts = 1 if protocol in ("s3", "s3a", "file") else cfg.storage.retries
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            if protocol not in cache:
                cache[protocol] = filesystem(url, cfg.storage)[0]
            fs = cache[protocol]
            path = fs._strip_protocol(url)
            try:
                size = fs.size(path)
            except (FileNotFoundError, PermissionError):
                raise
            except Exception:  # noqa: BLE001 - some stores cannot tell: read with the cap instead
                size = None
            if size is not None and size > limit:
                return f"video is {size} bytes > max_sample_bytes {limit} (not read)"
            kw = {"block_size": 0} if protocol in ("http", "https") else {}
            with fs.open(path, "rb", **kw) as f:
                data = _read_upto(f, limit + 1)
            if len(data) > limit:
                return f"video is over max_sample_bytes {limit} (stopped reading)"
            if not data:
                return "empty video (0 bytes)"
            return data
        except FileNotFoundError as e:
            if _really_missing(e):
                return f"video not found: {url}"
            last = e.__cause__  # fsspec's HTTP info() reports a refused connection as not found: retry it
            if attempt + 1 < attempts:
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
        except PermissionError as e:
            return f"no permission to read {url}: {one_line(e, 200)}"
        except Exception as e:  # noqa: BLE001 - connection refused, resets, 5xx: retried, then an error row
            last = e
            if attempt + 1 < attempts:
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
    return f"cannot fetch {url} after {attempts} attempt(s): {one_line(last, 300)}"


def iter_manifest_block(unit: str, group: str, cfg: InputConfig) -> Iterator[dict[str, Any]]:
    """The rows of one manifest block, in file order, videos fetched `fetch_concurrency` records at a time."""
    emitted: set[str] = set()
    cache: dict[str, Any] = {}
    n_ok = 0
    try:
        with ThreadPoolExecutor(max_workers=cfg.fetch_concurrency) as pool:
            window: list[list[dict[str, Any]]] = []

            def drain() -> Iterator[dict[str, Any]]:
                urls = [next((r["source_url"] for r in rows if r["status"] == "ok"), None) for rows in window]
                got = list(pool.map(lambda u: _fetch(u, cfg, cache) if u else None, urls))
                for rows, data in zip(window, got):
                    for r in rows:
                        if r["status"] == "ok":
                            if isinstance(data, str):
                                r.update(status="error", error_stage="read", error=data)
                            else:
                                r["video"] = data  # the spans of one row share one fetch
                        yield r
                window.clear()

            for i, rec in _records(unit, cfg):
                rows = _samples(rec, i, unit, group, cfg)
                for r in rows:
                    if r["row_id"] in emitted:  # the same video and span again: keep ids unique, say why
                        n = 1
                        while make_row_id(r["source_url"] or unit, f"{span_label((r['start_s'], r['end_s']))}#dup{n}") in emitted:
                            n += 1
                        label = f"{span_label((r['start_s'], r['end_s']))}#dup{n}"
                        r.update(row_id=make_row_id(r["source_url"] or unit, label), key=f"{r['key']}#dup{n}",
                                 status="error", error_stage="read",
                                 error=f"duplicate row: the same video and span as an earlier row of this block (manifest row {i})")
                    emitted.add(r["row_id"])
                window.append(rows)
                if len(window) >= cfg.fetch_concurrency:
                    for r in drain():
                        n_ok += 1
                        yield r
            for r in drain():
                n_ok += 1
                yield r
    except Exception as e:  # noqa: BLE001 - the block itself cannot be read: a row says so
        r = base_row(unit, group, "__shard__" if not n_ok else "__shard_tail__")
        r.update(status="error", error_stage="read", error=one_line(e))
        yield r
