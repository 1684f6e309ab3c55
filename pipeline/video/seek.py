"""Decoding a clip span of a longer source: the frames qwen-vl-utils 0.0.14 gives for `video_start`/`video_end`.

The plan is `pipeline.vs2.frames.span_indices` (decord reader: frame range from the clamped times, the span's
frame count through `smart_nframes`, `linspace(start_frame, end_frame, n)`); sizes and pixel bounds as for a
whole clip. Decoding starts at the keyframe before the span instead of the first frame of the source:

1. demux the stream's packets (no decoding): a frame's index is the rank of its pts among all packets' pts
   (decord's frame order), which holds when every packet is one frame with a unique pts and the packet
   count equals the frame count the plan used (checked);
2. start at the last keyframe (in decode order) before the first kept frame's packet whose pts is not
   after that frame (so open-GOP leading pictures of a later keyframe are never the start), and feed the
   decoder packets from there; each output frame is matched to the plan by pts;
3. stop after the last kept frame. Anything unexpected (a kept pts not produced, decoder errors, frames out
   of order) falls back to the sequential pass from frame 0 of `pipeline.video.decode`, so the result is
   always the full decode's frames (tests/test_spans.py compares both, and qwen-vl-utils itself).

On a 60 s 720p H.264 source a 2 s span costs the GOP before it plus the span (benchmark: jobs/benchmarks,
mode `span-seek`), not the whole source. With `decode.skip_nonref` the non-reference frames nobody keeps
are skipped on the way as well (H.264, single-threaded decoding).
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from pipeline.config import DecodeConfig
from pipeline.schema import one_line
from pipeline.video.decode import (DecodedVideo, DecodeError, _Corrupt, _decode_pass, _Deadline, _decoding,
                                   _Keeper, _open, _positions, _probe, _skip_nonref_applies, as_decode_errors,
                                   demux_packets)
from pipeline.vs2.frames import span_frame_range, span_indices

__all__ = ["decode_span"]


def decode_span(data: bytes, cfg: DecodeConfig, start_s: float | None, end_s: float | None) -> DecodedVideo:
    """Frames of the span [start_s, end_s] (seconds; None = the source's start / end) of the video in `data`.
    Bad spans (end <= start, start at or past the end of the video) raise DecodeError naming the frame range."""
    with as_decode_errors():
        return _decode_span(data, cfg, start_s, end_s)


def _decode_span(data: bytes, cfg: DecodeConfig, start_s: float | None, end_s: float | None) -> DecodedVideo:
    deadline = _Deadline(cfg.decode_timeout_s)
    if cfg.max_bytes is not None and len(data) > cfg.max_bytes:
        raise DecodeError(f"video is {len(data)} bytes > max_bytes={cfg.max_bytes}")
    container = _open(data, cfg, deadline)
    try:
        p = _probe(container, cfg, deadline)
    finally:
        container.close()
    try:
        _, _, count = span_frame_range(p.total_frames, p.fps, start_s, end_s)
        indices = span_indices(p.total_frames, p.fps, start_s, end_s, cfg)
    except ValueError as e:
        raise DecodeError(f"bad span [{start_s}, {end_s}] s: {one_line(str(e), 300)}") from None
    got = _seek_pass(data, p.stream_index, p.total_frames, indices, cfg, deadline)
    if got is None:
        frames, decoded, info, size, err = _decode_pass(data, p.stream_index, indices, cfg, deadline)
        if frames is None:
            why = f": {err}" if err else ""
            raise DecodeError(f"span [{start_s}, {end_s}] s ends past the decodable frames ({decoded} decoded, "
                              f"metadata said {p.total_frames}){why}")
    else:
        frames, info, size = got
    assert size is not None
    return DecodedVideo(frames=frames, indices=indices, total_frames=count, src_fps=p.fps, duration_s=count / p.fps,
                        width=size[1], height=size[0], rotation=info["rotation"], mirrored=info["mirrored"],
                        sample_aspect_ratio=info["sar"], src_width=p.coded_width, src_height=p.coded_height)


def _seek_pass(data: bytes, stream_index: int, total: int, indices: list[int], cfg: DecodeConfig,
               deadline: _Deadline) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]] | None:
    """The kept frames decoded from the keyframe before the span (see module docstring), or None when the
    stream does not allow it safely (the caller then decodes sequentially from frame 0)."""
    with _decoding(data, stream_index, cfg, deadline, None) as (container, stream):
        packets = demux_packets(container, stream, deadline)
        if packets is None or len(packets) != total:
            return None
        pts = sorted(p.pts for p in packets)
        if len(set(pts)) != len(pts):
            return None
        want = {pts[i]: positions for i, positions in _positions(indices).items()}
        first = pts[indices[0]]
        start = None
        for k, pkt in enumerate(packets):
            if pkt.is_keyframe and pkt.pts <= first:
                start = k
            if pkt.pts == first:
                break
        if start is None:
            return None
        keeper = _Keeper(stream, len(indices), cfg)
        cc = stream.codec_context
        skip = _skip_nonref_applies(cfg, cc.name)
        got: list[int] = []

        def take(frames: list[av.VideoFrame]) -> None:
            for frame in frames:
                if frame.is_corrupt:  # concealment depends on what was decoded before: not safe from a seek
                    raise _Corrupt
                positions = want.get(frame.pts)
                if positions is None:
                    continue
                if keeper.out is None:
                    keeper.first(frame)
                keeper.keep(frame, positions)
                got.append(frame.pts)

        try:
            for pkt in packets[start:]:
                if skip:
                    cc.skip_frame = "DEFAULT" if pkt.pts in want else "NONREF"
                take(cc.decode(pkt))
                if len(got) == len(want):
                    break
                deadline.check(f"decoding span frame {len(got)}")
            else:
                take(cc.decode(None))
        except (av.FFmpegError, _Corrupt):
            return None
        finally:
            cc.skip_frame = "DEFAULT"
        if got != sorted(want) or keeper.out is None or keeper.size is None:
            return None
        return keeper.out, keeper.info, keeper.size
