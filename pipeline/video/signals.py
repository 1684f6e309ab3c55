"""Cheap facts about a clip, measured on the frames the decode stage already produced (no second decode).

The input is the judge's frames: `DecodedVideo.frames`, (T, H, W, 3) uint8 RGB, sampled at 2 fps by the
qwen-vl-utils rule and resized to the judge's size. Definitions, scales and costs are in docs/signals.md;
in short (luma = BT.601 `0.299 R + 0.587 G + 0.114 B`, 0-255):

- `motion`: mean absolute luma difference between consecutive sampled frames, averaged over pixels and
  over the T-1 pairs (0-255; 0 = nothing changes). Measured on a 1-in-`STRIDE` pixel grid in each
  direction. A still image held for the whole clip scores ~0 (codec noise only).
- `flicker`: mean absolute change of the frames' mean luma between consecutive sampled frames (0-255):
  the part of the change that is global brightness (flashes, exposure pumping), not things moving.
- `blank_fraction`: fraction of sampled frames that are near-uniform: luma standard deviation below
  `BLANK_STD` levels (black, white or single-colour frames, fades through black).
- `sharpness`: variance of the 4-neighbour Laplacian of the middle frame's luma at full (judge) size,
  the usual blur measure; higher = more fine detail (a blurred or upscaled clip scores low).
- `phash`: 64-bit DCT perceptual hash of the middle frame (pHash as `imagehash.phash` defines it: luma
  reduced to 32x32 by area averaging, 2-D DCT-II, the 8x8 lowest frequencies compared with their median),
  16 hex digits, most significant bit = DCT coefficient (0, 0). Hamming distance <= ~10 of 64 = the same
  picture re-encoded or resized; ~32 = unrelated pictures.

All are deterministic functions of the frames, so the same frames give the same signals on any machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.schema import SIGNAL_COLUMNS

__all__ = ["SIGNAL_COLUMNS", "Signals", "compute_signals", "hamming", "phash"]

# Pixel grid for the whole-clip signals: 1 pixel in STRIDE in each direction (the judge's frames are at least
# ~100k pixels, so >= ~6k samples per frame; enough for a mean, 1/16 of the work).
STRIDE = 4
# A frame whose luma standard deviation is below this many levels (0-255) counts as blank: codec noise on a
# flat frame stays under ~1.5 levels, a dim real scene over ~8 (docs/signals.md).
BLANK_STD = 4.0
HASH_SIZE = 8  # phash bits = HASH_SIZE**2
HASH_SCALE = 4  # the picture is reduced to HASH_SIZE * HASH_SCALE pixels square before the DCT

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Signals:
    motion: float
    flicker: float
    blank_fraction: float
    sharpness: float
    phash: str

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (float32, 0-255) of uint8 RGB pixels (..., 3)."""
    return rgb.astype(np.float32) @ _LUMA


def _dct_matrix(n: int) -> np.ndarray:
    """Unnormalised DCT-II as a matrix (scipy.fftpack.dct type 2, norm=None): y[k] = 2 sum x[i] cos(pi k (2i+1) / 2n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(HASH_SIZE * HASH_SCALE)


def area_resize(y: np.ndarray, size: int) -> np.ndarray:
    """A 2-D array reduced to size x size by averaging the pixels of each cell (cells split the picture
    as evenly as integer bounds allow; every pixel counts once)."""
    h, w = y.shape
    if h < size or w < size:  # smaller than the grid: repeat pixels so every cell has one
        y = np.repeat(np.repeat(y, -(-size // h), axis=0), -(-size // w), axis=1)
        h, w = y.shape
    rows = np.linspace(0, h, size + 1).astype(int)
    cols = np.linspace(0, w, size + 1).astype(int)
    s = np.add.reduceat(np.add.reduceat(y.astype(np.float64), rows[:-1], axis=0), cols[:-1], axis=1)
    return s / np.outer(np.diff(rows), np.diff(cols))


def phash(y: np.ndarray) -> str:
    """64-bit perceptual hash of a luma picture, 16 hex digits (see the module docstring)."""
    small = area_resize(y, HASH_SIZE * HASH_SCALE)
    d = _DCT @ small @ _DCT.T
    # rounded, so that a flat picture (every AC coefficient ~1e-12 of float noise) hashes the same everywhere
    low = np.round(d[:HASH_SIZE, :HASH_SIZE], 6)
    bits = (low > np.median(low)).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{HASH_SIZE * HASH_SIZE // 4}x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def laplacian_variance(y: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (interior pixels) of a luma picture."""
    if y.shape[0] < 3 or y.shape[1] < 3:
        return 0.0
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]
    return float(lap.var())


def compute_signals(frames: np.ndarray) -> Signals:
    """The signals of a clip's sampled frames (T, H, W, 3) uint8, T >= 1."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T>=1, H, W, 3), got {frames.shape}")
    y = luma(frames[:, ::STRIDE, ::STRIDE])  # (T, h, w)
    t = y.shape[0]
    means = y.mean(axis=(1, 2))
    stds = y.std(axis=(1, 2))
    if t > 1:
        motion = float(np.abs(np.diff(y, axis=0)).mean())
        flicker = float(np.abs(np.diff(means)).mean())
    else:
        motion = flicker = 0.0
    mid = luma(frames[t // 2])
    return Signals(motion=motion, flicker=flicker, blank_fraction=float((stds < BLANK_STD).mean()),
                   sharpness=laplacian_variance(mid), phash=phash(mid))
