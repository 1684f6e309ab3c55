"""Frame sampling and resize planning, mirroring qwen-vl-utils 0.0.14 (`qwen_vl_utils/vision_process.py`).

Pure functions, no I/O, no torch. What the official VideoScore2 call `{"video": path, "fps": 2.0}` does:

1. the reader gets `total_frames` and `video_fps` (decord: `len(vr)`, `vr.get_avg_fps()`),
2. `smart_nframes` picks an even frame count n,
3. the reader keeps frames `torch.linspace(0, total_frames - 1, n).round()`,
4. `fetch_video` derives the per-frame pixel bounds from n and `smart_resize`s H, W to multiples of 28,
5. a bicubic antialiased resize to that size (done by the decoder, see `pipeline/video/decode.py`).

`DecodeConfig` maps onto the qwen-vl-utils knobs as follows: `fps`, `min_frames`, `max_frames`, `min_pixels`,
`total_pixels` are the `ele` keys of the same name; `max_pixels` plays the role of the module constant
`VIDEO_FRAME_MAX_PIXELS` (768*28*28), not of `ele["max_pixels"]`. With the defaults both readings coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import QWEN_FACTOR, DecodeConfig

MAX_RATIO = 200  # qwen-vl-utils MAX_RATIO
FRAME_FACTOR = 2  # qwen-vl-utils FRAME_FACTOR (temporal patch size)


def round_by_factor(number: float, factor: int) -> int:
    """qwen-vl-utils `round_by_factor`: closest multiple of factor (Python round: half to even)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    """qwen-vl-utils `ceil_by_factor`: smallest multiple of factor >= number."""
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    """qwen-vl-utils `floor_by_factor`: largest multiple of factor <= number."""
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: float | None = None,
                 max_pixels: float | None = None) -> tuple[int, int]:
    """qwen-vl-utils 0.0.14 `smart_resize`, line for line: H and W rounded to multiples of `factor`, then
    scaled (aspect ratio kept) into [min_pixels, max_pixels]. Defaults are the *image* bounds
    (4 and 16384 tokens of factor^2), as upstream; video callers always pass both bounds.

    Raises ValueError when the aspect ratio exceeds 200 (upstream message), AssertionError-equivalent
    ValueError when max_pixels < min_pixels. Upstream can return 0 for one side at extreme aspect
    ratios (> ~134 with the video bounds); that is mirrored, and `plan_frames` rejects it.
    """
    max_pixels = max_pixels if max_pixels is not None else (16384 * factor ** 2)
    min_pixels = min_pixels if min_pixels is not None else (4 * factor ** 2)
    if not max_pixels >= min_pixels:
        raise ValueError("The max_pixels of image must be greater than or equal to min_pixels.")
    if min(height, width) <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def smart_nframes(total_frames: int, video_fps: float, cfg: DecodeConfig) -> int:
    """qwen-vl-utils 0.0.14 `smart_nframes` for the `fps` branch (the official message has `fps`, no `nframes`):

        min_frames = ceil2(ele.get("min_frames", 4))
        max_frames = floor2(ele.get("max_frames", min(768, total_frames)))
        n = total_frames / video_fps * fps
        n = floor2(min(min(max(n, min_frames), max_frames), total_frames))
        error unless 2 <= n <= total_frames

    `cfg.max_frames` stands in for the FPS_MAX_FRAMES constant inside the default, i.e.
    floor2(min(cfg.max_frames, total_frames)); floor is monotone so this equals upstream with an explicit
    `max_frames` too. Raises ValueError (upstream message) when no even count >= 2 fits.
    """
    if not video_fps or video_fps <= 0 or not math.isfinite(video_fps):
        raise ValueError(f"video_fps must be a positive number, got {video_fps}")
    min_frames = ceil_by_factor(cfg.min_frames, FRAME_FACTOR)
    max_frames = floor_by_factor(min(cfg.max_frames, total_frames), FRAME_FACTOR)
    nframes = total_frames / video_fps * cfg.fps
    nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
    nframes = floor_by_factor(nframes, FRAME_FACTOR)
    if not (FRAME_FACTOR <= nframes and nframes <= total_frames):
        raise ValueError(f"nframes should in interval [{FRAME_FACTOR}, {total_frames}], but got {nframes}.")
    return int(nframes)


def frame_indices(total_frames: int, nframes: int) -> list[int]:
    """Indices of the kept frames: `torch.linspace(0, total_frames - 1, nframes).round().long()` as in the
    0.0.14 decord/torchcodec/torchvision readers, computed here with numpy in float64 (round half to even,
    like torch.round).

    Identical to torch's float32 result below ~12,000 source frames (6.7 min at 30 fps; checked for every
    2 fps plan up to 12,000 frames and 100k random (total, n) pairs; the first mismatch seen is at 12,283).
    Beyond that torch's float32 linspace is itself off by one frame at a few positions (its rounding error
    grows with the index, and its exact values depend on the CPU's SIMD path), while float64 is exact.
    With n even, (n-1) is odd, so no exact .5 tie ever occurs.
    """
    if nframes < 1 or total_frames < 1:
        raise ValueError(f"need total_frames >= 1 and nframes >= 1, got {total_frames}, {nframes}")
    return [int(i) for i in np.linspace(0, total_frames - 1, nframes).round()]


def frame_pixel_bounds(nframes: int, cfg: DecodeConfig) -> tuple[int, float]:
    """Per-frame (min_pixels, max_pixels) as computed inline in qwen-vl-utils 0.0.14 `fetch_video`:

        min_pixels = ele.get("min_pixels", VIDEO_FRAME_MIN_PIXELS)
        total_pixels = ele.get("total_pixels", MODEL_SEQ_LEN * 28 * 28 * 0.9)
        max_pixels = max(min(VIDEO_FRAME_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))

    max_pixels can be a float (the total budget divides); it is passed to smart_resize unchanged.
    """
    min_pixels = cfg.min_pixels
    max_pixels = max(min(cfg.max_pixels, cfg.total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    return min_pixels, max_pixels


@dataclass(frozen=True)
class FramePlan:
    """Which frames to keep and the size to resize them to (height, width: multiples of 28)."""

    indices: list[int]
    out_height: int
    out_width: int
    nframes: int


def plan_frames(total_frames: int, video_fps: float, height: int, width: int, cfg: DecodeConfig) -> FramePlan:
    """The whole qwen-vl-utils plan for one clip: smart_nframes -> linspace indices -> fetch_video's pixel
    bounds -> smart_resize. Raises ValueError if the clip cannot be planned (too few frames, bad fps,
    aspect ratio > 200, or a resize to zero pixels)."""
    n = smart_nframes(total_frames, video_fps, cfg)
    idx = frame_indices(total_frames, n)
    min_px, max_px = frame_pixel_bounds(n, cfg)
    h, w = smart_resize(height, width, factor=QWEN_FACTOR, min_pixels=min_px, max_pixels=max_px)
    if h <= 0 or w <= 0:
        raise ValueError(f"frame size {width}x{height} resizes to {w}x{h}")
    return FramePlan(indices=idx, out_height=h, out_width=w, nframes=n)


def span_frame_range(total_frames: int, video_fps: float, start_s: float | None, end_s: float | None) -> tuple[int, int, int]:
    """qwen-vl-utils 0.0.14 `calculate_video_frame_range` for `video_start`/`video_end` (seconds), line for line:
    both clamped to [0, total_frames / fps], start frame = ceil(start * fps), end frame = floor(end * fps) capped
    at the last frame. Returns (start_frame, end_frame, frame_count); the span's frames are then planned like a
    clip of `frame_count` frames (`smart_nframes`) and kept at `linspace(start_frame, end_frame, n).round()`.
    Raises ValueError (upstream's wording) when the start frame is not before the end frame: an empty or
    reversed span, or one that starts at or past the end of the video."""
    if video_fps <= 0:
        raise ValueError("video_fps must be a positive number")
    if total_frames <= 0:
        raise ValueError("total_frames must be a positive integer")
    if start_s is None and end_s is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start_frame = math.ceil(max(0.0, min(start_s, max_duration)) * video_fps) if start_s is not None else 0
    if end_s is not None:
        end_frame = min(math.floor(max(0.0, min(end_s, max_duration)) * video_fps), total_frames - 1)
    else:
        end_frame = total_frames - 1
    if start_frame >= end_frame:
        raise ValueError(f"Invalid time range: Start frame {start_frame} (at {start_s if start_s is not None else 0}s) exceeds end frame "
                         f"{end_frame} (at {end_s if end_s is not None else max_duration}s). Video duration: {max_duration:.2f}s "
                         f"({total_frames} frames @ {video_fps}fps)")
    return start_frame, end_frame, end_frame - start_frame + 1


def span_indices(total_frames: int, video_fps: float, start_s: float | None, end_s: float | None, cfg: DecodeConfig) -> list[int]:
    """The kept source frame indices of a span, as qwen-vl-utils' decord reader picks them:
    `torch.linspace(start_frame, end_frame, smart_nframes(frame_count)).round()` (float64 here, see frame_indices)."""
    start, end, count = span_frame_range(total_frames, video_fps, start_s, end_s)
    n = smart_nframes(count, video_fps, cfg)
    return [int(i) for i in np.linspace(start, end, n).round()]
