"""Test media made in memory with PyAV: real encoded clips whose frames all differ.

Nothing here touches the network or disk; every helper returns the container bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def synthetic_frame(i: int, width: int, height: int) -> np.ndarray:
    """RGB (H, W, 3) uint8 frame `i`: a smooth gradient that drifts with i plus a bright square moving
    across the picture, so consecutive frames differ everywhere and content is not flat."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    t = i * 0.07
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (x + t))
    g = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 1.3 - t))
    b = 0.5 + 0.5 * np.cos(2 * np.pi * (x + y + 0.5 * t))
    img = (np.stack([r + 0 * y, g + 0 * x, b], axis=-1) * 200 + 20).astype(np.uint8)
    s = max(2, min(width, height) // 5)
    cx = (i * max(1, width // 23)) % max(1, width - s)
    cy = (i * max(1, height // 17)) % max(1, height - s)
    img[cy:cy + s, cx:cx + s] = (255, 255, 255)
    return img


def encode_video(
    width: int,
    height: int,
    fps: float,
    seconds: float | None = None,
    nframes: int | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    container: str = "mp4",
    options: dict[str, str] | None = None,
    rotation: int | None = None,
    with_audio: bool = False,
    faststart: bool = False,
    first_frame: int = 0,
) -> bytes:
    """Encode a constant-frame-rate clip of `nframes` (or round(seconds*fps)) frames and return the bytes.

    gop: keyframe interval (None = the encoder default, x264: 250). options: extra codec options
    (x264 defaults to preset veryfast so tests stay fast; B-frames stay on). rotation: display-matrix
    rotation in degrees counter-clockwise (as `VideoFrame.rotation` reads it back). faststart: mp4 with the
    index (moov) before the media data, so a truncated copy still opens and still claims every frame
    (the muxer rewrites the file, which needs a real file: a temporary one is used). first_frame: the index of
    the synthetic pattern's first frame (clips that start elsewhere have other content).
    """
    if nframes is None:
        if seconds is None:
            raise ValueError("give seconds or nframes")
        nframes = int(round(seconds * fps))
    rate = Fraction(fps).limit_denominator(1001)
    if faststart:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "clip.mp4")
            with av.open(path, mode="w", format="mp4", options={"movflags": "faststart"}) as out:
                _encode_into(out, width, height, rate, nframes, codec, pix_fmt, gop, options, rotation, with_audio, first_frame)
            with open(path, "rb") as f:
                return f.read()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        _encode_into(out, width, height, rate, nframes, codec, pix_fmt, gop, options, rotation, with_audio, first_frame)
    return buf.getvalue()


def _encode_into(out, width, height, rate, nframes, codec, pix_fmt, gop, options, rotation, with_audio,
                 first_frame: int = 0) -> None:
    st = out.add_stream(codec, rate=rate)
    st.width, st.height, st.pix_fmt = width, height, pix_fmt
    opts = dict(options or {})
    if codec == "libx264":
        opts.setdefault("preset", "veryfast")
    if codec in ("libvpx", "libvpx-vp9"):
        opts.setdefault("deadline", "realtime")
        opts.setdefault("cpu-used", "8")
    if opts:
        st.options = opts
    if gop is not None:
        st.codec_context.gop_size = gop
    if rotation:
        st.set_display_rotation(rotation)
    ast = None
    if with_audio:
        ast = out.add_stream("aac", rate=16000)
    for i in range(nframes):
        frame = av.VideoFrame.from_ndarray(synthetic_frame(first_frame + i, width, height), format="rgb24")
        frame = frame.reformat(format=pix_fmt)
        frame.pts = i
        frame.time_base = 1 / rate
        for pkt in st.encode(frame):
            out.mux(pkt)
    for pkt in st.encode():
        out.mux(pkt)
    if ast is not None:
        _write_tone(out, ast, nframes / float(rate))


def encode_vfr_video(width: int, height: int, frame_times_s: list[float], codec: str = "libx264",
                     container: str = "mp4") -> bytes:
    """Variable-frame-rate clip: frame i is shown at frame_times_s[i] (strictly increasing), with a
    1/1000 s time base, so the container's average rate differs from any single frame interval."""
    buf = io.BytesIO()
    tb = Fraction(1, 1000)
    with av.open(buf, mode="w", format=container) as out:
        st = out.add_stream(codec, rate=30)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.time_base = tb
        st.codec_context.time_base = tb
        if codec == "libx264":
            st.options = {"preset": "veryfast"}
        for i, t in enumerate(frame_times_s):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24").reformat(format="yuv420p")
            frame.pts = int(round(t * 1000))
            frame.time_base = tb
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return buf.getvalue()


def _write_tone(out, ast, seconds: float) -> None:
    rate = ast.codec_context.sample_rate
    n = int(seconds * rate)
    t = np.arange(n, dtype=np.float32) / rate
    pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fsz = ast.codec_context.frame_size or 1024
    pts = 0
    for s in range(0, n, fsz):
        chunk = pcm[s:s + fsz]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = pts
        pts += chunk.shape[0]
        for pkt in ast.encode(frame):
            out.mux(pkt)
    for pkt in ast.encode():
        out.mux(pkt)


def encode_audio_only(seconds: float = 1.0, container: str = "mp4") -> bytes:
    """An audio-only container (AAC tone): a valid media file with no video stream."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        ast = out.add_stream("aac", rate=16000)
        _write_tone(out, ast, seconds)
    return buf.getvalue()


def decode_all_rgb(data: bytes) -> list[np.ndarray]:
    """Independent reference: decode every frame of the first video stream at full size to RGB,
    in decode (presentation) order, with no sampling logic at all."""
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def decode_all_frames(data: bytes) -> list:
    """Every decoded `av.VideoFrame` of the first video stream (kept for reformatting in tests), in
    order, up to the end of the stream or the first hard decoder error (a truncated file)."""
    frames = []
    with av.open(io.BytesIO(data)) as c:
        try:
            for f in c.decode(video=0):
                frames.append(f)
        except av.FFmpegError:
            pass
    return frames


# The 16 real text-to-video clips of ../shared/data/videos (next to the repo in development and in CI).
SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def shared_manifest() -> list[dict]:
    """The shared real clips' manifest records. Missing clips fail the test that needs them (a parity or
    decode test that quietly ran on fewer clips would prove less than it claims)."""
    import json

    manifest = SHARED_VIDEOS / "manifest.jsonl"
    if not manifest.exists():
        import pytest

        pytest.fail(f"the shared real clips are missing: {manifest} (expected beside the repo)")
    recs = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    missing = [r["file"] for r in recs if not (SHARED_VIDEOS / r["file"]).exists()]
    assert not missing, f"shared clips listed but missing: {missing}"
    return recs


def shared_clips() -> list[Path]:
    return [SHARED_VIDEOS / r["file"] for r in shared_manifest()]
