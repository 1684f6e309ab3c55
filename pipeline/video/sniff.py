"""Is this member a video? For WebDataset members whose extension is not a known video container.

A sample whose video member carries an extension the read stage does not list (``.video``, ``.bin``,
``.dat``, none at all after a several-dot key) still holds a video when FFmpeg says so: its demuxers probe
the bytes (magic numbers, then the stream headers) and find a video stream that is not a still image or
cover art. Only asked when a sample has no member with a known video extension, so the cost (one probe of
an in-memory buffer, no decoding of more than the first frames) is paid by unusual samples only.
"""

from __future__ import annotations

import io

# Extensions that are never the video even when FFmpeg can open them (stills, audio, text, tensors).
NOT_VIDEO_EXTS = frozenset({
    "json", "txt", "text", "cls", "cls2", "index", "idx", "id", "md", "csv", "tsv", "xml", "yaml", "yml", "html",
    "jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "jxl", "heic", "avif", "svg",
    "wav", "mp3", "flac", "m4a", "aac", "opus", "oga", "wma",
    "npy", "npz", "pth", "pt", "pyd", "pickle", "pkl", "msgpack", "safetensors", "ten", "mp",
})

# Demuxers that open single pictures or picture sequences: FFmpeg calls them video, a judge would not.
_STILL_FORMATS = ("image2", "_pipe", "apng", "webp", "gif_pipe")

PROBE_BYTES = 4 << 20  # enough for every container's headers, bounded for huge members


def looks_like_video(data: bytes, ext: str = "") -> bool:
    """True when FFmpeg opens `data` (its first PROBE_BYTES when it is longer: a whole MP4 with its moov
    at the end is probed in full) as a container with a moving-picture video stream."""
    if ext.lower() in NOT_VIDEO_EXTS or len(data) < 16:
        return False
    import av

    for buf in ((data,) if len(data) <= PROBE_BYTES else (data[:PROBE_BYTES], data)):
        try:
            with av.open(io.BytesIO(buf), mode="r", metadata_errors="ignore", options={"max_pixels": str(1 << 26)}) as c:
                names = (c.format.name or "").split(",")
                if any(n == f or n.endswith(f) for n in names for f in _STILL_FORMATS):
                    return False
                return any(not (int(s.disposition) & int(av.stream.Disposition.attached_pic)) for s in c.streams.video)
        except Exception:  # noqa: BLE001 - not a container FFmpeg knows (or a truncated one): try the whole buffer
            continue
    return False
