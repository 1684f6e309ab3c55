"""`vscore pack`: write a local folder of videos + prompts into WebDataset shards on any fsspec URL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import webdataset as wds

from pipeline.config import StorageOptions
from pipeline.errors import UsageError
from pipeline.stages.read import SHARD_PATTERN, VIDEO_EXTS
from pipeline.storage import filesystem, with_protocol


def _key_for(rel: str) -> str:
    """A WebDataset key from a relative path: no dots (WebDataset splits extensions at the first dot),
    no slashes, stable."""
    stem = rel.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "sample"


def collect_samples(src: str | Path) -> list[dict[str, Any]]:
    """Samples of a local folder: from ``manifest.jsonl`` (``file`` and ``prompt`` fields, other fields
    kept as metadata) or else from video files with a sidecar ``.txt`` (the prompt) or ``.json``."""
    src = Path(src)
    if not src.exists():
        raise UsageError(f"no source folder at {src}: the path does not exist")
    if not src.is_dir():
        raise UsageError(f"{src} is a file; expected a folder of videos with prompts (manifest.jsonl or sidecars)")
    manifest = src / "manifest.jsonl"
    samples: list[dict[str, Any]] = []
    if manifest.exists():
        for n, line in enumerate(manifest.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UsageError(f"{manifest}:{n + 1}: not a JSON object ({e})") from None
            if not isinstance(rec, dict) or "file" not in rec or "prompt" not in rec:
                raise UsageError(f"{manifest}:{n + 1}: needs 'file' and 'prompt' fields")
            if not (src / rec["file"]).is_file():
                raise UsageError(f"{manifest}:{n + 1}: no file {rec['file']} in {src}")
            samples.append({"path": src / rec["file"], "rel": rec["file"], "meta": rec})
        return samples
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()):
        rel = path.relative_to(src).as_posix()
        meta: dict[str, Any] = {"file": rel}
        if path.with_suffix(".json").exists():
            try:
                meta.update(json.loads(path.with_suffix(".json").read_text()))
            except (ValueError, TypeError) as e:
                raise UsageError(f"{path.with_suffix('.json')}: not a JSON object ({e})") from None
        if path.with_suffix(".txt").exists():
            meta["prompt"] = path.with_suffix(".txt").read_text().strip()
        if "prompt" not in meta:
            raise UsageError(f"{path}: no prompt (add {path.stem}.txt, {path.stem}.json or a manifest.jsonl)")
        samples.append({"path": path, "rel": rel, "meta": meta})
    return samples


def pack(src: str | Path, dest: str, shard_size: int = 100, storage: StorageOptions | None = None) -> list[dict[str, Any]]:
    """Write the samples of `src` into ``dest/shard-NNNNNN.tar``. Returns one record per shard
    (url, samples). Shard names are zero-padded and follow the sample order (stable across runs)."""
    storage = storage or StorageOptions()
    samples = collect_samples(src)
    if not samples:
        raise UsageError(f"no samples found in {src}: expected manifest.jsonl (file, prompt) or videos "
                         f"({', '.join(sorted(VIDEO_EXTS))}) with .txt/.json sidecars")
    fs, root = filesystem(dest, storage)
    if fs.isfile(root):
        raise UsageError(f"destination {dest} is a file; expected a folder or prefix for the shards")
    fs.makedirs(root, exist_ok=True)
    shards = []
    for index, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start:start + shard_size]
        path = f"{root.rstrip('/')}/{SHARD_PATTERN.format(index=index)}"
        seen: dict[str, int] = {}
        with fs.open(path, "wb") as f, wds.TarWriter(f) as sink:
            for s in chunk:
                key = _key_for(s["rel"])
                if key in seen:  # keys unique within a shard
                    seen[key] += 1
                    key = f"{key}-{seen[key]}"
                else:
                    seen[key] = 0
                ext = Path(s["rel"]).suffix.lower().lstrip(".") or "mp4"
                sink.write({"__key__": key, ext: Path(s["path"]).read_bytes(),
                            "json": json.dumps(s["meta"], ensure_ascii=False).encode()})
        shards.append({"url": with_protocol(fs, path), "samples": len(chunk)})
    return shards
