"""Read stage: list WebDataset shards on any fsspec URL and stream their samples as rows.

Layout of a sample: ``{key}.mp4`` (or another video extension) + ``{key}.json`` holding at least
``{"prompt": ...}`` and any metadata. A ``{key}.txt`` prompt is accepted too.

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

from pipeline.config import InputConfig, StorageOptions
from pipeline.schema import make_row_id, one_line
from pipeline.storage import filesystem, with_protocol

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")
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


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, ext = the rest."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def _base_row(shard: str, shard_group: str, key: str) -> dict[str, Any]:
    return {"row_id": make_row_id(shard, key), "key": key, "shard": shard, "shard_group": shard_group,
            "prompt": None, "meta_json": None, "video": b"", "status": "ok", "error_stage": None, "error": None}


def _finish_sample(row: dict[str, Any], parts: dict[str, Any], cfg: InputConfig) -> dict[str, Any]:
    """Fill prompt, metadata and video of one sample from its collected members, or mark it an error."""
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
    prompt = meta.get("prompt") if isinstance(meta.get("prompt"), str) else None
    if prompt is None and "txt" in parts:
        try:
            prompt = parts["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append("prompt is not UTF-8")
    row["prompt"] = prompt
    video_ext = next((e for e in cfg.video_extensions if e in parts), None)
    if video_ext is not None:
        row["video"] = parts[video_ext]
    if problems:
        row.update(status="error", error_stage="read", error=one_line("; ".join(problems)), video=b"")
    elif video_ext is None:
        row.update(status="error", error_stage="read", error=f"no video member (looked for {', '.join(cfg.video_extensions)})")
    elif prompt is None:
        row.update(status="error", error_stage="read", error="no prompt (no .json 'prompt' field and no .txt)", video=b"")
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

    def flush() -> dict[str, Any] | None:
        if current_key is None:
            return None
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
                key, ext = _split_member(member.name)
                if key != current_key:
                    row = flush()
                    if row is not None:
                        yield row
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
            row = flush()
            current_key = None
            if row is not None:
                yield row
    except Exception as e:  # noqa: BLE001 - storage/tar failures become data
        if current_key is not None:
            row = flush()
            if row is not None:
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
    from pipeline.run.stats import Reporter

    report = Reporter(stats_name)
    skips = batch.get("skip", [None] * len(batch["shard"]))
    for shard, group, skip in zip(batch["shard"], batch["shard_group"], skips):
        skip_set = set(skip) if skip is not None else set()
        buf: list[dict[str, Any]] = []
        ids: list[str] = []
        skipped = 0
        for row in iter_shard(str(shard), str(group), cfg):
            ids.append(row["row_id"])
            if row["row_id"] in skip_set:
                skipped += 1
                continue
            buf.append(row)
            if len(buf) >= cfg.samples_per_block:
                yield _columns(buf)
                buf = []
        if buf:
            yield _columns(buf)
        if manifest_dir:
            write_shard_manifest(manifest_dir, manifest_storage or cfg.storage, str(shard), ids)
        report({"rows_read": len(ids) - skipped, "rows_skipped": skipped, "shards_read": 1})


READ_COLUMNS = ("row_id", "key", "shard", "shard_group", "prompt", "meta_json", "video", "status", "error_stage", "error")


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
