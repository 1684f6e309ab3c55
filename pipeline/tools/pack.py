"""`vscore pack`: write a local folder of videos + prompts into WebDataset shards on any fsspec URL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import webdataset as wds

from pipeline.config import StorageOptions
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
    manifest = src / "manifest.jsonl"
    samples: list[dict[str, Any]] = []
    if manifest.exists():
        for n, line in enumerate(manifest.read_text().splitlines()):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "file" not in rec or "prompt" not in rec:
                raise ValueError(f"{manifest}:{n + 1}: needs 'file' and 'prompt' fields")
            samples.append({"path": src / rec["file"], "rel": rec["file"], "meta": rec})
        return samples
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()):
        rel = path.relative_to(src).as_posix()
        meta: dict[str, Any] = {"file": rel}
        if path.with_suffix(".json").exists():
            meta.update(json.loads(path.with_suffix(".json").read_text()))
        if path.with_suffix(".txt").exists():
            meta["prompt"] = path.with_suffix(".txt").read_text().strip()
        if "prompt" not in meta:
            raise ValueError(f"{path}: no prompt (add {path.stem}.txt, {path.stem}.json or a manifest.jsonl)")
        samples.append({"path": path, "rel": rel, "meta": meta})
    return samples


def pack(src: str | Path, dest: str, shard_size: int = 100, storage: StorageOptions | None = None) -> list[dict[str, Any]]:
    """Write the samples of `src` into ``dest/shard-NNNNNN.tar``. Returns one record per shard
    (url, samples). Shard names are zero-padded and follow the sample order (stable across runs)."""
    storage = storage or StorageOptions()
    samples = collect_samples(src)
    if not samples:
        raise ValueError(f"no samples found in {src}")
    fs, root = filesystem(dest, storage)
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
