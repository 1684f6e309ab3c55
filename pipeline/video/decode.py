"""Video decoding: video bytes -> the frames qwen-vl-utils 0.0.14 would feed VideoScore2 (PyAV, in memory).

`decode_video` follows the decord reader of qwen-vl-utils (`_read_video_decord`): total_frames and fps come
from container metadata (decord: `len(vr)`, `vr.get_avg_fps()`), the frame plan is `pipeline.vs2.frames.plan_frames`,
and the kept frames are resized to the planned size. Throughput rules (docs/cpu-stack.md section 5): decode
sequentially and never seek within a clip (seeking restarts at the previous keyframe, 5x slower at the x264 default
GOP; a clip *span* of a longer source is the exception: pipeline/video/seek.py starts at the keyframe before it),
convert and resize only the kept frames, straight from the decoder's YUV to rgb24 at the target size
(`VideoReformatter.reformat(frame, width=, height=, format="rgb24", interpolation=BICUBIC)`: what
`frame.reformat(...)` does, with one swscale context reused across the kept frames of a clip).

`pipeline.stages.decode.DecodeStage` is the Ray Data actor around it.

Bad media (tests/test_bad_media.py runs the whole fixture set): every input ends as frames or as one
`DecodeError` with a one-line message, which the stage turns into an error row (error_stage "decode").
Limits (`DecodeConfig`), each enforced before the allocation it guards:

- `max_bytes` (optional; a run already enforces `input.max_sample_bytes` at read): checked first.
- `max_decoded_pixels`: handed to FFmpeg as the decoders' `max_pixels` option, both for the decoders that
  `avformat_find_stream_info` runs while the container is opened and for ours, so no frame buffer above the
  limit is ever allocated, whatever size the container or the bitstream claims; the stream's size is checked
  again before decoding (clear error message) and the first decoded frame once more.
- `max_duration_s`: container duration, then frame count / fps, before decoding; the packet count of
  containers without a frame count stops at max_duration_s worth of packets.
- `decode_timeout_s`: one wall-clock budget per video, checked between packets and frames (probe, both
  decode passes). A decoder stuck inside a single FFmpeg call cannot be interrupted from Python; that case
  is left to Ray (a killed/restarted worker, task retries).

Output memory is bounded independently of the input: the planned frames never exceed the qwen-vl-utils
pixel budget (2 * total_pixels over the clip, at most max_pixels per frame), and the output array is
allocated untouched (np.empty), so pages are only committed for frames really decoded.

Geometry (`DecodeConfig.apply_rotation`, off by default): the reference readers of qwen-vl-utils (decord,
torchvision) hand the model coded pixels in coded orientation, so the default does the same for parity with
the official scores. On, frames follow the player: the display matrix is applied like ffmpeg's autorotate
(quarter turns and mirrors, read from the matrix itself, not only its rotation angle) and non-square pixels
are scaled to the display aspect ratio before the resize is planned (as ffplay/mpv show them). Arbitrary
angles are not applied (players would rotate with black corners).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from pipeline.config import DecodeConfig
from pipeline.vs2.frames import frame_indices, frame_pixel_bounds, smart_nframes, smart_resize
from pipeline.schema import one_line

__all__ = ["DecodeError", "DecodedVideo", "decode_video", "probe_video"]

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
    mirrored: bool = False  # the display matrix also mirrors the picture (applied only if cfg.apply_rotation)
    sample_aspect_ratio: float = 1.0  # pixel aspect ratio found (stream, else codec); applied only if cfg.apply_rotation
    src_width: int = 0  # the source's coded size, as probed (before any resize or rotation)
    src_height: int = 0


@dataclass
class _Probe:
    stream_index: int
    total_frames: int
    fps: float
    coded_width: int
    coded_height: int
    meta_duration_s: float | None
    frames_from: str  # "metadata" or "packets"
    codec: str = ""  # FFmpeg decoder name (h264, hevc, vp9, ...)


_clock = time.monotonic  # module-level so tests can drive the decode timeout with a fake clock


class _Deadline:
    """The wall-clock budget of one decode_video call (cfg.decode_timeout_s)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = _clock()

    def remaining(self) -> float:
        return self.seconds - (_clock() - self.start)

    def check(self, where: str) -> None:
        if _clock() - self.start > self.seconds:
            raise DecodeError(f"decode timeout: over decode_timeout_s={self.seconds:g}s while {where}")


def _decoder_options(cfg: DecodeConfig) -> dict[str, str]:
    # AVCodecContext `max_pixels`: FFmpeg refuses (av_image_check_size2, in ff_set_dimensions/ff_get_buffer)
    # any picture above it *before* allocating it, whatever size the headers claim.
    return {"max_pixels": str(cfg.max_decoded_pixels)}


def _open(data: bytes, cfg: DecodeConfig, deadline: _Deadline) -> av.container.InputContainer:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"video must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty video (0 bytes)")
    deadline.check("opening the container")
    try:
        # `options` reach the decoders avformat_find_stream_info opens to probe the streams (it decodes a
        # frame or more): max_pixels keeps a huge claimed size from being allocated there already. The open
        # timeout (an FFmpeg interrupt callback) bounds the probing loop by the remaining budget.
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore", options=_decoder_options(cfg),
                       timeout=(max(deadline.remaining(), 0.001), None))
    except av.FFmpegError as e:
        deadline.check("opening the container")
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


def _check_pixels(w: int, h: int, cfg: DecodeConfig) -> None:
    if w * h > cfg.max_decoded_pixels:
        raise DecodeError(f"frame size {w}x{h} exceeds max_decoded_pixels={cfg.max_decoded_pixels}")


def _probe(container: av.container.InputContainer, cfg: DecodeConfig, deadline: _Deadline | None = None) -> _Probe:
    """Metadata checks that must happen before any large allocation, then the frame count.

    Frame count like decord's `len(vr)`: the container's frame count (mp4/mov `nb_frames`); when the
    container does not record one (mkv/webm, some avi, gif), count the stream's packets by demuxing without
    decoding (one packet = one frame for every common video codec)."""
    deadline = deadline or _Deadline(cfg.decode_timeout_s)
    stream = _pick_stream(container)
    cc = stream.codec_context
    if cc is None:
        raise DecodeError("no decoder for the video stream's codec")
    w, h = int(cc.width or 0), int(cc.height or 0)
    _check_pixels(w, h, cfg)
    _check_pixels(int(cc.coded_width or 0), int(cc.coded_height or 0), cfg)
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
                    if total % 64 == 0:
                        deadline.check("counting packets")
        except av.FFmpegError:
            deadline.check("counting packets")
            pass  # a broken tail ends the count; decoding below re-plans if frames are missing
    if total <= 0:
        raise DecodeError("video stream has no frames")
    if total / fps > cfg.max_duration_s:
        raise DecodeError(f"duration {total / fps:.1f}s exceeds max_duration_s={cfg.max_duration_s:g}")
    return _Probe(stream.index, total, fps, w, h, dur, source, cc.name)


def probe_video(data: bytes, cfg: DecodeConfig | None = None) -> dict[str, Any]:
    """Metadata only (no frame decoding): total_frames, fps, coded size, duration, where the count came from."""
    cfg = cfg or DecodeConfig()
    deadline = _Deadline(cfg.decode_timeout_s)
    container = _open(data, cfg, deadline)
    try:
        p = _probe(container, cfg, deadline)
    except av.FFmpegError as e:
        raise DecodeError(_av_msg(e)) from None
    finally:
        container.close()
    return {"total_frames": p.total_frames, "fps": p.fps, "width": p.coded_width, "height": p.coded_height,
            "duration_s": p.meta_duration_s, "frames_from": p.frames_from}


@dataclass(frozen=True)
class _Geometry:
    """How coded pixels become displayed pixels: transpose (x <-> y), then mirror columns / rows of the
    result; `sar` scales the displayed width (applied through the resize target, not on pixels)."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    sar: float = 1.0

    def display_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) shown by a player for a coded w x h picture."""
        dw = max(1, int(round(w * self.sar))) if self.sar != 1.0 else w
        return (h, dw) if self.transpose else (dw, h)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.transpose:
            rgb = rgb.transpose(1, 0, 2)
        if self.flip_y:
            rgb = rgb[::-1]
        if self.flip_x:
            rgb = rgb[:, ::-1]
        return rgb


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's AV_FRAME_DATA_DISPLAYMATRIX (9 int32, a b u / c d v / x y w; a..d in 16.16), if any."""
    try:
        for sd in frame.side_data:
            if sd.type.name == "DISPLAYMATRIX":
                raw = bytes(sd)
                if len(raw) >= 36:
                    return struct.unpack("<9i", raw[:36])
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _matrix_geometry(m: tuple[int, ...] | None) -> tuple[bool, bool, bool] | None:
    """(transpose, flip_x, flip_y) of a display matrix that is a multiple of 90 degrees, mirrored or not;
    None for the identity, an arbitrary angle or a degenerate matrix (left as coded).

    FFmpeg's convention (libavutil/display.h): a source pixel (x, y) is shown at x' = a*x + c*y + tx,
    y' = b*x + d*y + ty (image coordinates, y down). With a, d ~ 0 the axes swap: x' = c*y, y' = b*x, i.e. the
    transposed picture with columns mirrored if c < 0 and rows if b < 0; otherwise x' = a*x, y' = d*y. This is
    the picture ffmpeg's autorotate (transpose/hflip/vflip filters) produces, e.g. 90 degrees CCW
    (a=0, b=-1, c=1, d=0) = np.rot90."""
    if m is None:
        return None
    a, b, c, d = m[0], m[1], m[3], m[4]
    scale = max(abs(a), abs(b), abs(c), abs(d))
    if scale == 0:
        return None
    eps = scale / 100  # 16.16 rounding of cos/sin: |value| < 1% of the scale is zero
    z = [abs(v) < eps for v in (a, b, c, d)]
    if z[1] and z[2] and not z[0] and not z[3]:
        g = (False, a < 0, d < 0)
    elif z[0] and z[3] and not z[1] and not z[2]:
        g = (True, c < 0, b < 0)
    else:
        return None
    return None if g == (False, False, False) else g


def _sample_aspect_ratio(stream: av.video.stream.VideoStream) -> float:
    """av_guess_sample_aspect_ratio: the container's (stream) value, else the bitstream's (codec context);
    1.0 when unknown or outside [1/10, 10] (treated as a broken tag rather than a real pixel shape)."""
    for sar in (stream.sample_aspect_ratio, getattr(stream.codec_context, "sample_aspect_ratio", None)):
        try:
            if sar is not None and sar.numerator > 0 and sar.denominator > 0:
                v = float(sar)
                return v if 0.1 <= v <= 10 else 1.0
        except (AttributeError, ZeroDivisionError, TypeError):
            continue
    return 1.0


class _Keeper:
    """The kept frames of one pass: the output size is decided on the first decoded frame (index 0 is
    always kept), as decord does, after the last safety check on its real size; each kept frame is
    converted and resized once (swscale, straight to RGB at the target size) into the output array."""

    def __init__(self, stream: av.video.stream.VideoStream, n: int, cfg: DecodeConfig) -> None:
        self.stream, self.n, self.cfg = stream, n, cfg
        self.out: np.ndarray | None = None
        self.size: tuple[int, int] | None = None
        self.geo = _Geometry()
        self.info: dict[str, Any] = {"rotation": 0, "mirrored": False, "sar": 1.0}
        self.reformatter = VideoReformatter()  # one swscale context reused for every kept frame

    def first(self, frame: av.VideoFrame) -> None:
        cfg = self.cfg
        _check_pixels(frame.width, frame.height, cfg)  # FFmpeg's max_pixels already refused anything larger
        self.info["rotation"] = int(frame.rotation or 0)
        mg = _matrix_geometry(_display_matrix(frame))
        self.info["mirrored"] = bool(mg) and (mg[0] + mg[1] + mg[2]) % 2 == 1  # odd number of reflections
        self.info["sar"] = _sample_aspect_ratio(self.stream)
        if cfg.apply_rotation:
            self.geo = _Geometry(*(mg or (False, False, False)), sar=self.info["sar"])
        dw, dh = self.geo.display_size(frame.width, frame.height)
        min_px, max_px = frame_pixel_bounds(self.n, cfg)
        try:
            size = smart_resize(dh, dw, min_pixels=min_px, max_pixels=max_px)
        except ValueError as e:
            raise DecodeError(one_line(e)) from None
        if size[0] <= 0 or size[1] <= 0:
            raise DecodeError(f"frame size {dw}x{dh} resizes to {size[1]}x{size[0]}")
        self.size = size
        self.out = np.empty((self.n, size[0], size[1], 3), dtype=np.uint8)

    def keep(self, frame: av.VideoFrame, positions: list[int]) -> None:
        assert self.out is not None and self.size is not None
        # swscale resizes in the coded orientation (a transposing display matrix swaps the target) and scales
        # non-square pixels through the target size; then the turn/mirror is applied.
        th, tw = (self.size[1], self.size[0]) if self.geo.transpose else self.size
        rgb = self.reformatter.reformat(frame, width=tw, height=th, format="rgb24", interpolation=RESIZE_INTERPOLATION,
                                        threads=self.cfg.threads).to_ndarray()
        rgb = self.geo.apply(rgb)
        for pos in positions:
            self.out[pos] = rgb


def _setup_decoder(stream: av.video.stream.VideoStream, cfg: DecodeConfig) -> None:
    cc = stream.codec_context
    cc.options = {**(cc.options or {}), **_decoder_options(cfg)}
    if cfg.threads == 1:
        cc.thread_type = "NONE"
        cc.thread_count = 1
    else:
        cc.thread_type = "AUTO"
        cc.thread_count = cfg.threads  # 0 = FFmpeg picks


@contextlib.contextmanager
def _decoding(data: bytes, stream_index: int, cfg: DecodeConfig, deadline: _Deadline,
              container: av.container.InputContainer | None) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container (the one given, or a fresh open of `data`) and its video stream set up for decoding;
    the container is closed on exit."""
    if container is None:
        container = _open(data, cfg, deadline)
    try:
        stream = container.streams[stream_index]
        _setup_decoder(stream, cfg)
        yield container, stream
    finally:
        container.close()


def _positions(indices: list[int]) -> dict[int, list[int]]:
    """frame index -> output positions (an index may repeat in the plan of a very short clip)."""
    want: dict[int, list[int]] = {}
    for pos, fi in enumerate(indices):
        want.setdefault(fi, []).append(pos)
    return want


def _decode_pass(data: bytes, stream_index: int, indices: list[int], cfg: DecodeConfig,
                 deadline: _Deadline, container: av.container.InputContainer | None = None,
                 ) -> tuple[np.ndarray | None, int, dict[str, Any], tuple[int, int] | None, str | None]:
    """One sequential decode pass keeping `indices` (sorted). Returns (frames or None, frames decoded,
    geometry info, planned (h, w), last FFmpeg error). frames is None when the stream ended (or broke)
    before the last index. `container`: an open container nothing has been demuxed from yet (the probe's,
    when it read the frame count from metadata); it is closed here. Otherwise the container is opened
    afresh (the probe demuxed it for counting). No seek anywhere."""
    with _decoding(data, stream_index, cfg, deadline, container) as (container, stream):
        want = _positions(indices)
        last = max(indices)
        keeper = _Keeper(stream, len(indices), cfg)
        decoded = 0
        last_error: str | None = None
        try:
            for frame in container.decode(stream):
                i = decoded
                decoded += 1
                if keeper.out is None:
                    keeper.first(frame)
                positions = want.get(i)
                if positions:
                    keeper.keep(frame, positions)
                if i >= last:
                    break
                deadline.check(f"decoding frame {decoded}")
        except av.FFmpegError as e:
            # A hard decoder/demuxer error mid-stream is treated like the end of the stream: what was
            # decoded before it is the clip (the caller re-plans if planned frames are missing).
            deadline.check(f"decoding frame {decoded}")
            last_error = _av_msg(e)
        if decoded <= last:
            return None, decoded, keeper.info, keeper.size, last_error
        return keeper.out, decoded, keeper.info, keeper.size, last_error


def demux_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  deadline: _Deadline) -> list[av.Packet] | None:
    """Every non-empty packet of `stream`, in file order, or None when one has no pts, is flagged discard or
    corrupt, or the demuxer fails: the frame-exact passes (skip_nonref, span seek) then decline."""
    packets = []
    try:
        for pkt in container.demux(stream):
            if pkt.size:
                if pkt.pts is None or pkt.is_discard or pkt.is_corrupt:
                    return None
                packets.append(pkt)
                if len(packets) % 256 == 0:
                    deadline.check("reading packets")
    except av.FFmpegError:
        return None
    return packets


class _Corrupt(Exception):
    """A decoded frame carries FFmpeg's corrupt flag."""


# Codecs whose "non-reference" flag means what the skip pass needs: no other frame is predicted from it.
_SKIP_NONREF_CODECS = {"h264"}


def _skip_nonref_applies(cfg: DecodeConfig, codec: str) -> bool:
    """Whether `_decode_pass_skip_nonref` may try at all: asked, no frame threading, a covered codec."""
    return cfg.skip_nonref and cfg.threads == 1 and codec in _SKIP_NONREF_CODECS


def _decode_pass_skip_nonref(data: bytes, stream_index: int, indices: list[int], cfg: DecodeConfig,
                             deadline: _Deadline, container: av.container.InputContainer | None = None,
                             ) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]] | None:
    """The same kept frames as `_decode_pass`, without decoding the non-reference frames nobody keeps.

    Written here because no library does it frame-exactly: FFmpeg's `skip_frame=NONREF` drops every
    non-reference frame (kept ones too) and renumbers the rest. Here the skip is switched off for the
    packets of kept frames only. A frame's index in the full pass (the decoder's output order) is the rank
    of its pts among all packets' pts, which holds when every packet is one frame, shown in pts order:
    checked up front (H.264, no frame threading, no discard-flagged or pts-less packet, unique pts, the
    first packet a keyframe with the smallest pts, so no leading frames, enough packets for the plan) and
    after (every kept pts produced, in increasing order, no decoder error, no frame flagged corrupt: FFmpeg's
    error concealment fills damaged blocks from whatever it decoded last, which skipping changes). Any doubt
    returns None and the caller runs the full pass. Skipped frames are never referenced, so every decoded
    frame is bit-identical to the full pass (tested on every fixture: tests/test_skip_nonref.py)."""
    with _decoding(data, stream_index, cfg, deadline, container) as (container, stream):
        if not _skip_nonref_applies(cfg, stream.codec_context.name):
            return None
        packets = demux_packets(container, stream, deadline)
        if packets is None:
            return None
        pts = sorted(p.pts for p in packets)
        last = max(indices)
        if (indices[0] != 0 or len(packets) <= last or len(set(pts)) != len(pts) or not packets[0].is_keyframe
                or packets[0].pts != pts[0]):
            return None
        want = {pts[i]: positions for i, positions in _positions(indices).items()}
        keeper = _Keeper(stream, len(indices), cfg)
        cc = stream.codec_context
        got: list[int] = []

        def take(frames: list[av.VideoFrame]) -> None:
            for frame in frames:
                if frame.is_corrupt:  # concealed damage: what it shows depends on which frames were decoded
                    raise _Corrupt
                keeper.info["frames_decoded"] = keeper.info.get("frames_decoded", 0) + 1
                positions = want.get(frame.pts)
                if positions is None:
                    continue  # a reference frame nobody keeps
                if keeper.out is None:
                    keeper.first(frame)
                keeper.keep(frame, positions)
                got.append(frame.pts)

        try:
            for pkt in packets:
                cc.skip_frame = "DEFAULT" if pkt.pts in want else "NONREF"
                take(cc.decode(pkt))
                if len(got) == len(want):
                    break
                deadline.check(f"decoding frame {len(got)}")
            else:
                take(cc.decode(None))  # drain the reorder buffer
        except (av.FFmpegError, _Corrupt):
            return None
        finally:
            cc.skip_frame = "DEFAULT"
        if got != sorted(want) or keeper.out is None or keeper.size is None:
            return None
        return keeper.out, keeper.info, keeper.size


def _sample_indices(total: int, fps: float, cfg: DecodeConfig, what: str) -> list[int]:
    """qwen-vl-utils' frame count and indices for a stream of `total` frames at `fps`."""
    try:
        return frame_indices(total, smart_nframes(total, fps, cfg))
    except ValueError as e:
        raise DecodeError(f"{what}: {one_line(e)}") from None


def decode_video(data: bytes, cfg: DecodeConfig, *, max_bytes: int | None = None) -> DecodedVideo:
    """Decode `data` (an in-memory container) into the qwen-vl-utils frame plan. Raises only DecodeError
    for bad media.

    Truncated files / lying metadata: if the stream ends (or breaks) before the last planned frame, the clip is
    re-planned on the number of frames actually decoded (same fps) and decoded again: the result is exactly
    what qwen-vl-utils would produce for the playable part of the file (its torchvision reader also plans
    on the frames it really decoded). The second pass only happens for broken files. Fewer than 2 playable
    frames -> DecodeError. A stream with *more* frames than its metadata says is sampled per the metadata
    (like decord) and decoding stops after the last planned frame.

    Geometry: the display-matrix rotation is reported in `rotation` (and a mirror in `mirrored`), the pixel
    aspect ratio in `sample_aspect_ratio`; they are applied (quarter turns and mirrors, planned on the
    displayed size, SAR scaled to the display aspect) only when `cfg.apply_rotation` (off by default: decord
    and torchvision ignore them, so the reference sees coded pixels in the coded orientation).

    Limits (see the module docstring): `max_bytes` (this argument and/or cfg.max_bytes, the smaller wins),
    cfg.max_decoded_pixels, cfg.max_duration_s, cfg.decode_timeout_s.
    """
    with as_decode_errors():
        return _decode_video(data, cfg, max_bytes)


@contextlib.contextmanager
def as_decode_errors() -> Iterator[None]:
    """What bad media raises inside PyAV/numpy, as one `DecodeError` with a one-line message (the decode
    stage turns it into an error row); anything else is a bug and propagates."""
    try:
        yield
    except DecodeError:
        raise
    except av.FFmpegError as e:
        raise DecodeError(_av_msg(e)) from None
    except (ValueError, OverflowError, ZeroDivisionError, IndexError, UnicodeError) as e:
        raise DecodeError(one_line(e, 300)) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None


def _decode_video(data: bytes, cfg: DecodeConfig, max_bytes: int | None = None) -> DecodedVideo:
    deadline = _Deadline(cfg.decode_timeout_s)
    limits = [v for v in (max_bytes, cfg.max_bytes) if v is not None]
    if limits and isinstance(data, (bytes, bytearray, memoryview)) and len(data) > min(limits):
        raise DecodeError(f"video is {len(data)} bytes > max_bytes={min(limits)}")
    container = _open(data, cfg, deadline)
    try:
        p = _probe(container, cfg, deadline)
        total = p.total_frames
        indices = _sample_indices(total, p.fps, cfg, "cannot sample frames")
    except BaseException:
        container.close()
        raise
    # Performance (docs/performance.md): when the frame count came from metadata the probe demuxed nothing,
    # so the first pass decodes from this same container (the packets avformat_find_stream_info buffered
    # are returned first, as after a fresh open): one open + stream probe per video instead of two (the
    # probe decodes the first frame(s); ~5% of a 5 s 720p clip). A probe that counted packets consumed the
    # stream: open afresh.
    if p.frames_from != "metadata":
        container.close()
        container = None
    fast = None
    if _skip_nonref_applies(cfg, p.codec):  # decided from the probe: no container wasted on other codecs
        fast = _decode_pass_skip_nonref(data, p.stream_index, indices, cfg, deadline, container=container)
        container = None  # consumed either way; a full pass opens afresh
    replanned = False
    if fast is not None:
        frames, info, size = fast
    else:
        frames, decoded, info, size, err = _decode_pass(data, p.stream_index, indices, cfg, deadline, container=container)
        if frames is None:
            if decoded < 2:
                why = f": {err}" if err else ""
                raise DecodeError(f"only {decoded} decodable frame(s) (metadata said {total}){why}")
            total = decoded
            indices = _sample_indices(total, p.fps, cfg, "cannot sample frames after truncation")
            frames, decoded2, info, size, err = _decode_pass(data, p.stream_index, indices, cfg, deadline)
            if frames is None:
                raise DecodeError(f"stream not decodable consistently ({decoded} then {decoded2} frames)")
            replanned = True
    assert size is not None
    return DecodedVideo(frames=frames, indices=indices, total_frames=total, src_fps=p.fps,
                        duration_s=total / p.fps, width=size[1], height=size[0], rotation=info["rotation"],
                        replanned=replanned, mirrored=info["mirrored"], sample_aspect_ratio=info["sar"],
                        src_width=p.coded_width, src_height=p.coded_height)
