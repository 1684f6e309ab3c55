"""Decode stage: video bytes -> the frames qwen-vl-utils 0.0.14 would feed VideoScore2 (PyAV, in memory).

`decode_video` follows the decord reader of qwen-vl-utils (`_read_video_decord`): total_frames and fps come
from container metadata (decord: `len(vr)`, `vr.get_avg_fps()`), the frame plan is `pipeline.frames.plan_frames`,
and the kept frames are resized to the planned size. Throughput rules (docs/cpu-stack.md section 5): decode
sequentially and never seek (seeking restarts at the previous keyframe, 5x slower at the x264 default GOP),
convert and resize only the kept frames, straight from the decoder's YUV to rgb24 at the target size
(`VideoReformatter.reformat(frame, width=, height=, format="rgb24", interpolation=BICUBIC)`: what
`frame.reformat(...)` does, with one swscale context reused across the kept frames of a clip).

`DecodeStage` is the Ray Data actor around it (`map_batches(DecodeStage, fn_constructor_args=(cfg,),
compute=ActorPoolStrategy(...), batch_format="numpy")`).
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import pyarrow as pa
from av.video.reformatter import Interpolation, VideoReformatter

from pipeline.config import DecodeConfig
from pipeline.frames import frame_indices, frame_pixel_bounds, smart_nframes, smart_resize
from pipeline.schema import one_line

__all__ = ["DecodeError", "DecodedVideo", "DecodeStage", "decode_video", "probe_video"]

# swscale's bicubic (SWS_BICUBIC, B=0 C=0.6). qwen-vl-utils resizes with torchvision's antialiased bicubic
# (a=-0.5, kernel support widened by the downscale factor). swscale's filter also widens with the downscale
# factor (filter size ~ 4 * src/dst taps), so it is antialiased as well; the two kernels differ slightly and
# the pixel-level gap to the reference is measured separately, not here. Colour conversion uses the
# frame's own colorspace/range tags (PyAV >= 17 passes them to sws_scale_frame).
RESIZE_INTERPOLATION = Interpolation.BICUBIC


def _av_msg(e: BaseException) -> str:
    """`InvalidDataError: Invalid data found when processing input` (no errno, no '<none>' file name)."""
    strerror = getattr(e, "strerror", None)
    return f"{type(e).__name__}: {strerror}" if strerror else one_line(e, 300)


class DecodeError(Exception):
    """The input cannot be turned into frames (not a video, no video stream, too big, too short...).
    `str(e)` is a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8, C-contiguous; H, W = the planned (resized) size
    indices: list[int]  # source frame index of each kept frame
    total_frames: int  # frame count the plan used (metadata, or the decoded count after a re-plan)
    src_fps: float  # stream average frame rate
    duration_s: float  # total_frames / src_fps (the duration qwen-vl-utils' sampling implies)
    width: int  # resized width
    height: int  # resized height
    rotation: int = 0  # display-matrix rotation (degrees CCW) found in the stream; applied only if cfg.apply_rotation
    replanned: bool = False  # the stream held fewer frames than its metadata; planned again on the decoded count


@dataclass
class _Probe:
    stream_index: int
    total_frames: int
    fps: float
    coded_width: int
    coded_height: int
    meta_duration_s: float | None
    frames_from: str  # "metadata" or "packets"


def _open(data: bytes) -> av.container.InputContainer:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"video must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty video (0 bytes)")
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise DecodeError(f"cannot open container: {_av_msg(e)}") from None


def _pick_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is not an attached picture (cover art), like av_find_best_stream."""
    streams = [s for s in container.streams.video if not (int(s.disposition) & int(av.stream.Disposition.attached_pic))]
    if not streams:
        raise DecodeError("no video stream")
    return streams[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    # decord get_avg_fps() = avg_frame_rate; fall back to the guessed / real base rate when it is missing.
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate.denominator != 0 and float(rate) > 0 and math.isfinite(float(rate)):
            return float(rate)
    raise DecodeError("unknown frame rate")


def _meta_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _probe(container: av.container.InputContainer, cfg: DecodeConfig) -> _Probe:
    """Metadata checks that must happen before any large allocation, then the frame count.

    Frame count like decord's `len(vr)`: the container's frame count (mp4/mov `nb_frames`); when the
    container does not record one (mkv/webm, some avi, gif), count the stream's packets by demuxing without
    decoding (one packet = one frame for every common video codec)."""
    stream = _pick_stream(container)
    cc = stream.codec_context
    w, h = int(cc.width or 0), int(cc.height or 0)
    if w * h > cfg.max_decoded_pixels:
        raise DecodeError(f"frame size {w}x{h} exceeds max_decoded_pixels={cfg.max_decoded_pixels}")
    fps = _stream_fps(stream)
    dur = _meta_duration(container, stream)
    if dur is not None and dur > cfg.max_duration_s:
        raise DecodeError(f"duration {dur:.1f}s exceeds max_duration_s={cfg.max_duration_s:g}")
    total = int(stream.frames or 0)
    source = "metadata"
    if total <= 0:
        source = "packets"
        total = 0
        limit = int(cfg.max_duration_s * fps) + 1  # never count more than max_duration_s worth of packets
        try:
            for pkt in container.demux(stream):
                if pkt.size:
                    total += 1
                    if total > limit:
                        raise DecodeError(f"more than {limit} frames: duration exceeds max_duration_s={cfg.max_duration_s:g}")
        except av.FFmpegError:
            pass  # a broken tail ends the count; decoding below re-plans if frames are missing
    if total <= 0:
        raise DecodeError("video stream has no frames")
    if total / fps > cfg.max_duration_s:
        raise DecodeError(f"duration {total / fps:.1f}s exceeds max_duration_s={cfg.max_duration_s:g}")
    return _Probe(stream.index, total, fps, w, h, dur, source)


def probe_video(data: bytes, cfg: DecodeConfig | None = None) -> dict[str, Any]:
    """Metadata only (no frame decoding): total_frames, fps, coded size, duration, where the count came from."""
    cfg = cfg or DecodeConfig()
    container = _open(data)
    try:
        p = _probe(container, cfg)
    except av.FFmpegError as e:
        raise DecodeError(_av_msg(e)) from None
    finally:
        container.close()
    return {"total_frames": p.total_frames, "fps": p.fps, "width": p.coded_width, "height": p.coded_height,
            "duration_s": p.meta_duration_s, "frames_from": p.frames_from}


def _rot_k(rotation: int) -> int:
    """Quarter turns (counter-clockwise, np.rot90 convention) for a display-matrix rotation; 0 if not a multiple of 90."""
    r = int(round(rotation)) % 360
    return r // 90 if r % 90 == 0 else 0


def _decode_pass(data: bytes, stream_index: int, indices: list[int], cfg: DecodeConfig) -> tuple[np.ndarray | None, int, int, tuple[int, int] | None]:
    """One sequential decode pass keeping `indices` (sorted). Returns (frames or None, frames decoded,
    rotation, planned (h, w)). frames is None when the stream ended (or broke) before the last index.
    The container is opened afresh (the probe's container was demuxed for counting): no seek anywhere."""
    container = _open(data)
    try:
        stream = container.streams[stream_index]
        cc = stream.codec_context
        if cfg.threads == 1:
            cc.thread_type = "NONE"
            cc.thread_count = 1
        else:
            cc.thread_type = "AUTO"
            cc.thread_count = cfg.threads  # 0 = FFmpeg picks
        want: dict[int, list[int]] = {}
        for pos, fi in enumerate(indices):
            want.setdefault(fi, []).append(pos)
        last = max(indices)
        n = len(indices)
        out: np.ndarray | None = None
        size: tuple[int, int] | None = None
        rotation = 0
        k_rot = 0
        reformatter = VideoReformatter()  # one swscale context reused for every kept frame
        decoded = 0
        try:
            for frame in container.decode(stream):
                i = decoded
                decoded += 1
                if out is None:
                    # First frame (index 0 is always kept): decide the output size from what the decoder
                    # produces, as decord does, after the last safety check on its real size.
                    if frame.width * frame.height > cfg.max_decoded_pixels:
                        raise DecodeError(f"frame size {frame.width}x{frame.height} exceeds max_decoded_pixels={cfg.max_decoded_pixels}")
                    rotation = int(frame.rotation or 0)
                    k_rot = _rot_k(rotation) if cfg.apply_rotation else 0
                    dh, dw = (frame.width, frame.height) if k_rot % 2 else (frame.height, frame.width)
                    min_px, max_px = frame_pixel_bounds(n, cfg)
                    try:
                        size = smart_resize(dh, dw, min_pixels=min_px, max_pixels=max_px)
                    except ValueError as e:
                        raise DecodeError(one_line(e)) from None
                    if size[0] <= 0 or size[1] <= 0:
                        raise DecodeError(f"frame size {dw}x{dh} resizes to {size[1]}x{size[0]}")
                    out = np.empty((n, size[0], size[1], 3), dtype=np.uint8)
                positions = want.get(i)
                if positions:
                    # swscale resizes in the coded orientation; a 90/270 display rotation swaps the target.
                    th, tw = (size[1], size[0]) if k_rot % 2 else size
                    rgb = reformatter.reformat(frame, width=tw, height=th, format="rgb24",
                                               interpolation=RESIZE_INTERPOLATION,
                                               threads=cfg.threads).to_ndarray()
                    if k_rot:
                        rgb = np.rot90(rgb, k_rot)
                    for pos in positions:
                        out[pos] = rgb
                if i >= last:
                    break
        except av.FFmpegError:
            # A hard decoder/demuxer error mid-stream is treated like the end of the stream: what was
            # decoded before it is the clip (the caller re-plans if planned frames are missing).
            pass
        if decoded <= last:
            return None, decoded, rotation, size
        return out, decoded, rotation, size
    finally:
        container.close()


def decode_video(data: bytes, cfg: DecodeConfig) -> DecodedVideo:
    """Decode `data` (an in-memory container) into the qwen-vl-utils frame plan. Raises only DecodeError
    for bad media.

    Truncated files / lying metadata: if the stream ends (or breaks) before the last planned frame, the clip is
    re-planned on the number of frames actually decoded (same fps) and decoded again: the result is exactly
    what qwen-vl-utils would produce for the playable part of the file (its torchvision reader also plans
    on the frames it really decoded). The second pass only happens for broken files. Fewer than 2 playable
    frames -> DecodeError. A stream with *more* frames than its metadata says is sampled per the metadata
    (like decord) and decoding stops after the last planned frame.

    Rotation: the display-matrix rotation is reported in `rotation`; frames are rotated (quarter turns,
    planned on the displayed size) only when `cfg.apply_rotation` (off by default: decord and torchvision
    ignore it, so the reference sees the coded orientation). Flips in the matrix are ignored.
    """
    try:
        return _decode_video(data, cfg)
    except DecodeError:
        raise
    except av.FFmpegError as e:
        raise DecodeError(_av_msg(e)) from None
    except (ValueError, OverflowError, ZeroDivisionError, IndexError, UnicodeError) as e:
        raise DecodeError(one_line(e, 300)) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None


def _decode_video(data: bytes, cfg: DecodeConfig) -> DecodedVideo:
    container = _open(data)
    try:
        p = _probe(container, cfg)
    finally:
        container.close()
    total = p.total_frames
    try:
        n = smart_nframes(total, p.fps, cfg)
    except ValueError as e:
        raise DecodeError(f"cannot sample frames: {one_line(e)}") from None
    indices = frame_indices(total, n)
    frames, decoded, rotation, size = _decode_pass(data, p.stream_index, indices, cfg)
    replanned = False
    if frames is None:
        if decoded < 2:
            raise DecodeError(f"only {decoded} decodable frame(s) (metadata said {total})")
        total = decoded
        try:
            n = smart_nframes(total, p.fps, cfg)
        except ValueError as e:
            raise DecodeError(f"cannot sample frames after truncation: {one_line(e)}") from None
        indices = frame_indices(total, n)
        frames, decoded2, rotation, size = _decode_pass(data, p.stream_index, indices, cfg)
        if frames is None:
            raise DecodeError(f"stream not decodable consistently ({decoded} then {decoded2} frames)")
        replanned = True
    assert size is not None
    return DecodedVideo(frames=frames, indices=indices, total_frames=total, src_fps=p.fps,
                        duration_s=total / p.fps, width=size[1], height=size[0], rotation=rotation,
                        replanned=replanned)


# ----------------------------------------------------------------------------------------------------
# Ray Data stage
# ----------------------------------------------------------------------------------------------------

_EMPTY_FRAMES_SHAPE = (0, 0, 0, 3)


def _str_or_none(v: Any) -> str | None:
    """A string cell from a numpy batch. Ray hands an all-null column over as float NaN: that is None."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


def _frames_type() -> pa.DataType:
    from ray.data.extensions import ArrowVariableShapedTensorType

    return ArrowVariableShapedTensorType(dtype=pa.uint8(), ndim=4)


class DecodeStage:
    """Ray Data callable class: a batch of read rows (with `video` bytes) -> the same rows with frames.

    Input: a numpy batch (`batch_format="numpy"`) with INPUT_COLUMNS. Output: a pyarrow Table with exactly
    OUTPUT_COLUMNS (types in `output_types()`); `video` is dropped. `frames` is always an Arrow
    variable-shaped uint8 tensor column (ndim 4), also when every clip of a batch has the same size, so all
    blocks share one schema; downstream numpy batches get it back as an object array of (T, H, W, 3) arrays.

    Rows whose status is not "ok" pass through untouched, with empty (0, 0, 0, 3) frames and zero numbers;
    a decode failure makes the row status "error", error_stage "decode", error "<one line>".
    """

    PASS_THROUGH = ("row_id", "key", "shard", "shard_group", "prompt", "meta_json")
    INPUT_COLUMNS = PASS_THROUGH + ("video", "status", "error_stage", "error")
    OUTPUT_COLUMNS = PASS_THROUGH + ("status", "error_stage", "error", "frames", "frame_indices", "num_frames",
                                     "width", "height", "duration_s", "src_fps", "total_frames", "decode_s")

    def __init__(self, cfg: DecodeConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def output_types() -> dict[str, pa.DataType]:
        types = {c: pa.string() for c in DecodeStage.PASS_THROUGH + ("status", "error_stage", "error", "frame_indices")}
        types.update(frames=_frames_type(), num_frames=pa.int32(), width=pa.int32(), height=pa.int32(),
                     duration_s=pa.float64(), src_fps=pa.float64(), total_frames=pa.int64(), decode_s=pa.float64())
        return {c: types[c] for c in DecodeStage.OUTPUT_COLUMNS}

    @staticmethod
    def empty_frames() -> np.ndarray:
        return np.zeros(_EMPTY_FRAMES_SHAPE, dtype=np.uint8)

    def decode_row(self, video: Any, status: str, error_stage: str | None, error: str | None) -> dict[str, Any]:
        """Output fields (all but the pass-through ones) for one row."""
        res: dict[str, Any] = {"status": status, "error_stage": error_stage, "error": error,
                               "frames": self.empty_frames(), "frame_indices": "", "num_frames": 0,
                               "width": 0, "height": 0, "duration_s": 0.0, "src_fps": 0.0, "total_frames": 0,
                               "decode_s": 0.0}
        if status != "ok":
            return res
        t0 = time.perf_counter()
        try:
            data = bytes(video) if isinstance(video, (bytes, bytearray, memoryview, np.ndarray)) else b""
            dv = decode_video(data, self.cfg)
        except DecodeError as e:
            res.update(status="error", error_stage="decode", error=str(e))
        except Exception as e:  # noqa: BLE001 - a bug must not kill the whole batch; it becomes an error row
            res.update(status="error", error_stage="decode", error=one_line(e))
        else:
            res.update(frames=dv.frames, frame_indices=json.dumps(dv.indices), num_frames=int(dv.frames.shape[0]),
                       width=dv.width, height=dv.height, duration_s=float(dv.duration_s), src_fps=float(dv.src_fps),
                       total_frames=int(dv.total_frames))
        res["decode_s"] = time.perf_counter() - t0
        return res

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ray.data.extensions import ArrowVariableShapedTensorArray

        n = len(batch["row_id"])
        rows = []
        for i in range(n):
            status = _str_or_none(batch["status"][i]) or "ok"
            rows.append(self.decode_row(batch["video"][i], status, _str_or_none(batch["error_stage"][i]),
                                        _str_or_none(batch["error"][i])))
        types = self.output_types()
        cols: dict[str, pa.Array] = {}
        for c in self.PASS_THROUGH:
            cols[c] = pa.array([_str_or_none(v) for v in batch[c]] if c in batch else [None] * n, type=pa.string())
        for c in self.OUTPUT_COLUMNS:
            if c in cols:
                continue
            if c == "frames":
                frames = [r["frames"] for r in rows]
                cols[c] = ArrowVariableShapedTensorArray.from_numpy(frames) if n else pa.array([], type=types[c])
            else:
                cols[c] = pa.array([r[c] for r in rows], type=types[c])
        return pa.Table.from_arrays([cols[c] for c in self.OUTPUT_COLUMNS], names=list(self.OUTPUT_COLUMNS))
