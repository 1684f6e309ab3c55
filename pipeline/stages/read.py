"""Read stage: list WebDataset shards on any fsspec URL and stream their samples as rows.

Layout of a sample: ``{key}.mp4`` (or any container FFmpeg reads: `config.VIDEO_EXTENSIONS`, or a member of
another extension whose bytes FFmpeg opens as video) + ``{key}.json`` with the prompt in one of
`input.prompt_fields` (default ``prompt``, ``caption``, ``text``; dotted paths such as ``meta.caption``) and
any metadata, or a ``{key}.txt`` prompt: the layouts of vscore pack, video2dataset, OpenVid-1M and HF-style
exports. Keys may hold dots (``abc.def.mp4``): a member name ending in a known extension splits there.
Optional JSON fields ``start_s``/``end_s`` (or a ``spans`` list with a parallel caption list, see
`pipeline.spans`) make the sample a clip of its video, one row per span.

Reading is our own small shard reader over ``tarfile`` in streaming mode rather than
``ray.data.read_webdataset``: it keeps exactly one row per sample (a malformed sample becomes an error
row instead of a crash or a silently dropped file), never buffers a whole shard, never uses member
names as paths, and avoids the per-sample size-estimation overhead of Ray's reader (ray#65350).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from typing import Any

from braceexpand import braceexpand

from pipeline.config import VIDEO_EXTENSIONS, InputConfig, StorageOptions
from pipeline.schema import make_content_hash, make_row_id, one_line
from pipeline.spans import SpanError, is_listish
from pipeline.stages.manifest import iter_manifest_block
from pipeline.stages.samples import base_row as _base_row, expand_spans, first_prompt, get_field, span_values
from pipeline.storage import filesystem, with_protocol

log = logging.getLogger(__name__)

VIDEO_EXTS = tuple(f".{e}" for e in VIDEO_EXTENSIONS)  # what `vscore pack` packs; read reads them all
# Member extensions split off a several-dot name before the first-dot rule applies (WebDataset's own rule
# splits ``abc.def.mp4`` into key ``abc``, ext ``def.mp4``: webdataset issue 11).
_KNOWN_EXTS = frozenset(VIDEO_EXTENSIONS) | {"json", "txt", "cls", "jpg", "jpeg", "png", "webp", "npy", "wav", "mp3", "flac"}
SHARD_PATTERN = "shard-{index:06d}.tar"
# Tar members one sample (key) may have; more is an error row (the rest are skipped unread). WebDataset
# samples have a handful (video, json, txt, a few tensors).
MAX_MEMBERS_PER_SAMPLE = 64


def list_shards(spec: str, storage: StorageOptions) -> list[str]:
    """Expand a shard spec: whitespace-separated URLs, each with brace ranges (``{000..009}``, ``{a,b}``)
    and globs (``*``, ``?``, ``[..]``). Globs are resolved against storage; plain URLs are kept as given
    (a missing shard then becomes an error row when read). Sorted, de-duplicated."""
    out: list[str] = []
    for part in spec.split():
        for url in braceexpand(part):
            if any(c in url for c in "*?["):
                fs, path = filesystem(url, storage)
                out.extend(with_protocol(fs, p) for p in sorted(fs.glob(path)) if not fs.isdir(p))
            else:
                out.append(url)
    return sorted(dict.fromkeys(out))


def _split_member(name: str, current_key: str | None = None, known: frozenset[str] | set[str] = _KNOWN_EXTS,
                  current_exts: Any = ()) -> tuple[str, str]:
    """(key, ext) of a tar member; members of one sample are adjacent. A name extending the current sample's
    key by extensions it does not have yet (``abc.def.seg.png`` after ``abc.def.mp4``) belongs to it; else a
    name ending in a known extension splits at that last dot (keys may hold dots: ``abc.def.mp4`` ->
    ``abc.def``, ``mp4``); else WebDataset's convention: key = path up to the first dot of the basename."""
    slash = name.rfind("/")
    if current_key is not None and name.startswith(current_key + ".") and "/" not in name[len(current_key):]:
        rest = name[len(current_key) + 1:].lower()
        if rest not in current_exts and rest.rsplit(".", 1)[-1] not in current_exts:
            return current_key, rest
    last = name.rfind(".")
    if last > slash + 1 and name[last + 1:].lower() in known:
        return name[:last], name[last + 1:].lower()
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def _video_member(parts: dict[str, Any], cfg: InputConfig) -> str | None:
    """The member holding the video: the first known extension, else a member FFmpeg opens as video."""
    ext = next((e for e in cfg.video_extensions if e in parts), None)
    if ext is None:
        from pipeline.video.sniff import looks_like_video

        ext = next((e for e, v in parts.items() if not e.startswith("__") and isinstance(v, bytes) and looks_like_video(v, e)), None)
    return ext


def _finish_sample(row: dict[str, Any], parts: dict[str, Any], cfg: InputConfig) -> list[dict[str, Any]]:
    """Fill prompt, metadata, span and video of one sample from its collected members, or mark it an error.
    One row, or one row per span when the sample lists several."""
    problems = parts.pop("__errors__", [])
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("sidecar json is not an object")
        except (UnicodeDecodeError, ValueError) as e:
            problems.append(f"bad json metadata: {one_line(e, 200)}")
            meta = {}
    row["meta_json"] = json.dumps(meta, ensure_ascii=False) if meta else None
    start, end, spans = span_values(meta, cfg.columns, shard_defaults=True)
    listed = spans is not None or is_listish(start) or is_listish(end)
    prompt: Any = next((get_field(meta, f) for f in cfg.prompt_fields if listed and is_listish(get_field(meta, f))), None)
    if prompt is None:
        prompt = first_prompt(meta, cfg.prompt_fields)
    if prompt is None and "txt" in parts:
        try:
            prompt = parts["txt"].decode("utf-8").strip() or None
        except UnicodeDecodeError:
            problems.append("prompt is not UTF-8")
    video_ext = _video_member(parts, cfg)
    if video_ext is not None:
        row["video"] = parts[video_ext]
    try:
        clips = expand_spans(start, end, spans, prompt)
    except SpanError as e:
        problems.append(f"bad span: {one_line(str(e), 200)}")
        clips = [(None, prompt)]
    rows = []
    for i, (span, text) in enumerate(clips):
        r = dict(row)
        if len(clips) > 1:
            r["key"] = f"{row['key']}@span{i}"
            r["row_id"] = make_row_id(r["shard"], r["key"])
        r["prompt"] = text if isinstance(text, str) and text.strip() else None
        if span is not None:
            r["start_s"], r["end_s"] = span
        rows.append(_check_sample(r, problems, video_ext, cfg))
    return rows


def _check_sample(row: dict[str, Any], problems: list[str], video_ext: str | None, cfg: InputConfig) -> dict[str, Any]:
    if problems:
        row.update(status="error", error_stage="read", error=one_line("; ".join(problems)), video=b"")
    elif video_ext is None:
        row.update(status="error", error_stage="read", error=f"no video member (looked for {', '.join(cfg.video_extensions)}, "
                   "and found no other member FFmpeg opens as video)")
    elif row["prompt"] is None:
        row.update(status="error", error_stage="read",
                   error=f"no prompt (no non-empty JSON field {', '.join(cfg.prompt_fields)} and no .txt)", video=b"")
    elif not row["video"]:
        row.update(status="error", error_stage="read", error="empty video member", video=b"")
    return row


def iter_shard(shard: str, shard_group: str, cfg: InputConfig) -> Iterator[dict[str, Any]]:
    """Stream the samples of one tar shard as rows (one per key, in file order). A shard that cannot be
    opened or breaks mid-way yields an error row keyed ``__shard__`` (or ``__shard_tail__``) after the
    samples it could read."""
    fs, path = filesystem(shard, cfg.storage)
    current_key: str | None = None
    parts: dict[str, Any] = {}
    emitted: set[str] = set()
    known = _KNOWN_EXTS | set(cfg.video_extensions)

    def flush() -> list[dict[str, Any]]:
        if current_key is None:
            return []
        key = current_key
        if key in emitted:  # duplicate key later in the shard: keep the row unique and say why
            n = 1
            while f"{key}#dup{n}" in emitted:
                n += 1
            key = f"{key}#dup{n}"
            parts.setdefault("__errors__", []).append(f"duplicate key {current_key!r} in shard")
        emitted.add(key)
        return _finish_sample(_base_row(shard, shard_group, key), parts, cfg)

    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name, current_key, known, parts)
                if key != current_key:
                    yield from flush()
                    current_key, parts = key, {}
                    held = members = 0
                # Limits per SAMPLE, not per member: one key with many members must not grow without bound.
                # A member that would take the sample past them is skipped unread (streaming mode).
                members += 1
                if members > MAX_MEMBERS_PER_SAMPLE:
                    if members == MAX_MEMBERS_PER_SAMPLE + 1:
                        parts.setdefault("__errors__", []).append(f"more than {MAX_MEMBERS_PER_SAMPLE} members")
                    continue
                if held + member.size > cfg.max_sample_bytes:
                    parts.setdefault("__errors__", []).append(
                        f"member {ext} ({member.size} bytes) takes the sample past max_sample_bytes {cfg.max_sample_bytes}")
                    continue
                fobj = tar.extractfile(member)
                parts[ext] = fobj.read() if fobj is not None else b""
                held += len(parts[ext])
            rows = flush()
            current_key = None
            yield from rows
    except Exception as e:  # noqa: BLE001 - storage/tar failures become data
        if current_key is not None:
            for row in flush():
                row.update(status="error", error_stage="read", error=one_line(f"shard broke while reading this sample: {one_line(e, 300)}"), video=b"")
                yield row
        key = "__shard__" if not emitted else "__shard_tail__"
        r = _base_row(shard, shard_group, key)
        r.update(status="error", error_stage="read", error=one_line(e))
        yield r


def shard_group_of(index: int, shards_per_group: int) -> str:
    # not all digits, so hive partition discovery keeps it a string
    return f"g{index // shards_per_group:05d}"


def read_shards_batch(batch: dict[str, Any], cfg: InputConfig, stats_name: str | None = None,
                      manifest_dir: str | None = None, manifest_storage: StorageOptions | None = None) -> Iterator[dict[str, list[Any]]]:
    """Ray Data UDF (map_batches, batch_size=1 shard): yields blocks of `cfg.samples_per_block` rows.

    Rows whose id is in the shard's `skip` list (already committed by an earlier run) are not emitted.
    When the shard has been listed to its end, its row ids are recorded in `manifest_dir` so a later
    run can skip the whole shard once all of them are committed."""
    from pipeline.run.resume import write_shard_manifest
    from pipeline.run.stats import Reporter, storage_retries

    report = Reporter(stats_name)
    try:
        yield from _read_shards(batch, cfg, report, manifest_dir, manifest_storage, write_shard_manifest)
    finally:  # also when the task fails: its retries happened (the next task in this process would report them late)
        report(storage_retries("read"))


def _read_shards(batch: dict[str, Any], cfg: InputConfig, report: Any, manifest_dir: str | None,
                 manifest_storage: StorageOptions | None, write_shard_manifest: Any) -> Iterator[dict[str, list[Any]]]:
    skips = batch.get("skip", [None] * len(batch["shard"]))
    for shard, group, skip in zip(batch["shard"], batch["shard_group"], skips):
        skip_set = set(skip) if skip is not None else set()
        buf: list[dict[str, Any]] = []
        ids: list[str] = []
        skipped = 0
        rows = iter_manifest_block(str(shard), str(group), cfg) if cfg.manifest else iter_shard(str(shard), str(group), cfg)
        for row in rows:
            ids.append(row["row_id"])
            if row["row_id"] in skip_set:
                skipped += 1
                continue
            video = row.get("video")
            row["content_hash"] = (make_content_hash(video, row.get("start_s"), row.get("end_s"))
                                   if video and row.get("status", "ok") == "ok" else None)
            buf.append(row)
            if len(buf) >= cfg.samples_per_block:
                yield _columns(buf)
                buf = []
        if buf:
            yield _columns(buf)
        if manifest_dir:
            write_shard_manifest(manifest_dir, manifest_storage or cfg.storage, str(shard), ids)
        report({"rows_read": len(ids) - skipped, "rows_skipped": skipped, "shards_read": 1})


READ_COLUMNS = ("row_id", "key", "shard", "shard_group", "prompt", "meta_json", "video", "status", "error_stage", "error",
                "source_url", "start_s", "end_s", "content_hash")


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in READ_COLUMNS}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive in memory from (name, data) pairs (used by tests and fixtures)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
