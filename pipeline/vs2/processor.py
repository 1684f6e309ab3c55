"""The Qwen2-VL video processor's outputs, computed with numpy: `pixel_values_videos` and `video_grid_thw`
byte-identical to transformers' `Qwen2VLVideoProcessor` on frames that need no resampling or resizing
(`do_sample_frames=False`, `do_resize=False`, the way both engines call it), tested on real clips
(tests/test_video_processor.py).

What transformers does (5.19, `Qwen2VLVideoProcessor._preprocess` with the checkpoint's settings): frames
(T, C, H, W) -> float32; rescale and normalize fused as `(x - mean / rescale_factor) / (std / rescale_factor)`
with mean/std as float32 tensors multiplied by `1 / rescale_factor` (torchvision `normalize`: `sub_`, `div_`
in float32); then `patchify`: view (grid_t, temporal_patch, C, grid_h/merge, merge, patch, grid_w/merge,
merge, patch), permute to (grid_t, grid_h/merge, grid_w/merge, merge_h, merge_w, C, temporal_patch, patch_h,
patch_w) and flatten to (grid_t*grid_h*grid_w, C*temporal_patch*patch*patch).

Here the permutation is done first, on the uint8 frames (a quarter of the bytes), then one conversion to
float32 and the same two float32 operations per element with each column's channel constants: every output
element is the same IEEE float32 computation on the same input byte, so the result is bit-identical.

Two steps, usable apart: `patchify` (the permutation, on uint8: what vLLM >= 0.32 feeds a Qwen2.5-VL model
when it normalizes on the device, `mm_device_do_normalize`, its default) and `normalize` (the float32 rescale +
normalize of the HF processor, for the official transformers path and vLLM with device normalization off).
The vLLM engine hands these to vLLM pre-processed (`pipeline.engines.vllm_video`, `engine.video_processor=numpy`),
so the HF video processor no longer runs in the scoring actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.vs2.chat import MERGE, PATCH, TEMPORAL_PATCH, check_frames


@dataclass(frozen=True)
class VideoProcessorSettings:
    """The checkpoint's video-processor constants (its preprocessor/processor config)."""

    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    patch_size: int = PATCH
    temporal_patch_size: int = TEMPORAL_PATCH
    merge_size: int = MERGE

    @classmethod
    def from_processor(cls, video_processor: Any) -> "VideoProcessorSettings":
        vp = video_processor
        if not (vp.do_rescale and vp.do_normalize):
            raise ValueError("only the fused rescale + normalize path (do_rescale and do_normalize) is implemented")
        return cls(tuple(float(x) for x in vp.image_mean), tuple(float(x) for x in vp.image_std),
                   float(vp.rescale_factor), int(vp.patch_size), int(vp.temporal_patch_size), int(vp.merge_size))


@dataclass(frozen=True)
class Patches:
    """One video's frames in the HF patch layout (`patchify`): the same uint8 bytes as the frames, permuted, with the
    frames' (T, H, W) and the patch geometry. What the decode stage ships instead of frames when the engine takes
    them (`decode.patchify`): the scoring actor hands them to vLLM as they are."""

    data: np.ndarray  # (grid_t*grid_h*grid_w, 3*tp*p*p) uint8
    frame_shape: tuple[int, int, int]  # (T, H, W) of the frames they hold
    patch_size: int = PATCH
    temporal_patch_size: int = TEMPORAL_PATCH
    merge_size: int = MERGE

    def __post_init__(self) -> None:
        t, h, w = self.frame_shape
        p, tp, m = self.patch_size, self.temporal_patch_size, self.merge_size
        if t <= 0 or t % tp or h <= 0 or w <= 0 or h % (p * m) or w % (p * m):
            raise ValueError(f"patches of frames {t}x{h}x{w}: T must be a positive multiple of {tp}, H and W of {p * m}")
        want = ((t // tp) * (h // p) * (w // p), 3 * tp * p * p)
        d = self.data
        if not isinstance(d, np.ndarray) or d.dtype != np.uint8 or d.shape != want:
            raise ValueError(f"patches of frames {t}x{h}x{w} must be uint8 {want}, got "
                             f"{getattr(d, 'dtype', type(d).__name__)} {getattr(d, 'shape', None)}")

    @property
    def grid(self) -> np.ndarray:
        """video_grid_thw (1, 3) int64, as the HF processor returns it."""
        t, h, w = self.frame_shape
        return np.array([[t // self.temporal_patch_size, h // self.patch_size, w // self.patch_size]], dtype=np.int64)

    def same_layout(self, s: Any) -> bool:
        """Whether `s` (settings) patchifies with this geometry."""
        return (s.patch_size, s.temporal_patch_size, s.merge_size) == (self.patch_size, self.temporal_patch_size, self.merge_size)

    def frames(self) -> np.ndarray:
        """The (T, H, W, 3) uint8 frames back: the inverse permutation (exact)."""
        return unpatchify(self.data, self.frame_shape, self)

    @classmethod
    def of(cls, frames: np.ndarray, s: Any = None) -> "Patches":
        """`frames` (T, H, W, 3) uint8 patchified with `s`'s geometry (default: the Qwen2-VL constants)."""
        s = s or cls
        data, _ = patchify(frames, s)
        t, h, w = frames.shape[:3]
        return cls(data, (int(t), int(h), int(w)), s.patch_size, s.temporal_patch_size, s.merge_size)


def patchify(frames: np.ndarray, s: Any) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 patches (grid_t*grid_h*grid_w, 3*tp*p*p), video_grid_thw int64 (1, 3)) of one video of uint8
    frames (T, H, W, 3) with T a multiple of the temporal patch and H, W of patch x merge: the HF processor's
    patch layout, on the raw bytes (the same bytes as the frames, permuted). `s`: anything with patch_size,
    merge_size and temporal_patch_size (`VideoProcessorSettings`, `Patches`)."""
    t, h, w = check_frames(frames)
    p, m, tp = s.patch_size, s.merge_size, s.temporal_patch_size
    gt, gh, gw = t // tp, h // p, w // p
    c = frames.shape[-1]
    # (gt, tp, gh/m, m, p, gw/m, m, p, C) -> (gt, gh/m, gw/m, m_h, m_w, C, tp, p_h, p_w)
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), np.array([[gt, gh, gw]], dtype=np.int64)


def unpatchify(patches: np.ndarray, frame_shape: tuple[int, int, int], s: Any) -> np.ndarray:
    """The inverse of `patchify`: (T, H, W, 3) uint8 frames from their patches (`s`: the geometry they were made with)."""
    t, h, w = frame_shape
    p, m, tp = s.patch_size, s.merge_size, s.temporal_patch_size
    gt, gh, gw = t // tp, h // p, w // p
    c = patches.shape[-1] // (tp * p * p)
    x = patches.reshape(gt, gh // m, gw // m, m, m, c, tp, p, p).transpose(0, 6, 1, 3, 7, 2, 4, 8, 5)
    return np.ascontiguousarray(x.reshape(t, h, w, c))


def normalize(patches: np.ndarray, s: VideoProcessorSettings) -> np.ndarray:
    """float32 `pixel_values_videos` from uint8 patches: the HF processor's fused rescale + normalize, the same
    IEEE float32 operations per element (columns are channel-major: C x tp x p x p)."""
    out = patches.astype(np.float32)
    inv = 1.0 / s.rescale_factor  # as transformers: mean/std tensors (float32) x (1 / rescale_factor)
    mean = (np.asarray(s.image_mean, np.float32) * np.float32(inv)).astype(np.float32)
    std = (np.asarray(s.image_std, np.float32) * np.float32(inv)).astype(np.float32)
    per = s.temporal_patch_size * s.patch_size * s.patch_size  # columns per channel
    np.subtract(out, np.repeat(mean, per), out=out)
    np.divide(out, np.repeat(std, per), out=out)
    return out


def video_patches(frames: np.ndarray, s: VideoProcessorSettings) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values_videos float32 (grid_t*grid_h*grid_w, 3*tp*p*p), video_grid_thw int64 (1, 3)): the HF
    processor's outputs with rescale + normalize (`patchify` then `normalize`)."""
    patches, grid = patchify(frames, s)
    return normalize(patches, s), grid
