"""Clips for the signal and prefilter tests, encoded in memory with PyAV (H.264, yuv420p): a still picture,
black, flashing (the whole picture switching between two brightnesses) and very short clips, plus the shared
real clips' location."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import av
import numpy as np

from tests.media import synthetic_frame

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"

W, H, FPS = 640, 360, 24


def real_clips() -> list[Path]:
    """The shared real clips; fails (never skips) when they are missing."""
    clips = sorted(REAL_DIR.rglob("*.mp4"))
    assert clips, f"the shared real clips are missing: expected *.mp4 under {REAL_DIR}"
    return clips


def encode_frames(frame: Callable[[int], np.ndarray], n: int, width: int = W, height: int = H, fps: int = FPS,
                  crf: int = 23) -> bytes:
    """An mp4 of `n` frames, frame(i) -> (height, width, 3) uint8 RGB."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"preset": "veryfast", "crf": str(crf)}
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame(i), format="rgb24").reformat(format="yuv420p")
            f.pts = i
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return buf.getvalue()


STILL = synthetic_frame(3, W, H)


def still_clip(seconds: float = 5.0) -> bytes:
    return encode_frames(lambda i: STILL, int(seconds * FPS))


def black_clip(seconds: float = 5.0) -> bytes:
    return encode_frames(lambda i: np.zeros((H, W, 3), np.uint8), int(seconds * FPS))


def moving_clip(seconds: float = 5.0, width: int = W, height: int = H) -> bytes:
    return encode_frames(lambda i: synthetic_frame(i, width, height), int(seconds * FPS), width, height)


FLASH_PERIOD = 13  # frames per half period (~0.5 s): the sampled frames (~13 apart at 2 fps) alternate phases
FLASH_DIM = 0.35


def flash_factor(i: int) -> float:
    """Brightness factor of frame i of the flashing clip: the still picture, alternately full and dimmed."""
    return 1.0 if (i // FLASH_PERIOD) % 2 == 0 else FLASH_DIM


def flashing_clip(seconds: float = 5.0) -> bytes:
    return encode_frames(lambda i: (STILL.astype(np.float32) * flash_factor(i)).round().astype(np.uint8), int(seconds * FPS))
