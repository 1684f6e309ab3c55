"""`decode.skip_nonref`: frame-exact reference-frame skipping must give byte-identical frames to the full
decode on every clip, take the fast path on ordinary H.264, really skip frames there, and fall back to the
full pass (same result) on anything its guards do not cover."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.video import decode as D
from pipeline.config import DecodeConfig
from pipeline.video.decode import DecodeError, decode_video
from tests.media import shared_clips
from tests.media_fixtures import CASES, case_bytes, encode

FULL = DecodeConfig(skip_nonref=False)  # the full pass (the default is skip_nonref on)
SKIP = DecodeConfig(skip_nonref=True)
SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples" / "videos").rglob("*.mp4"))
SHARED = shared_clips()  # fails collection if the shared clips are missing

# H.264 streams as encoders write them: B-pyramid (some B-frames are references), plain non-reference
# B-frames, open GOPs, short GOPs, no B-frames, and containers without a frame count (packets counted).
H264 = {
    "x264_default": lambda: encode(320, 192, 24, 72),
    "nonref_b": lambda: encode(320, 192, 24, 72, options={"x264-params": "bframes=3:b-pyramid=none"}),
    "open_gop": lambda: encode(320, 192, 24, 72, options={"x264-params": "open-gop=1:keyint=24:bframes=3"}),
    "short_gop": lambda: encode(320, 192, 30, 90, options={"x264-params": "keyint=10:bframes=2"}),
    "no_b": lambda: encode(320, 192, 24, 48, options={"x264-params": "bframes=0"}),
    "mkv": lambda: encode(320, 192, 24, 72, fmt="matroska", options={"x264-params": "bframes=3:b-pyramid=none"}),
    "mpegts": lambda: encode(320, 192, 25, 75, fmt="mpegts", options={"x264-params": "bframes=3"}),
}


def _outcome(data: bytes, cfg: DecodeConfig):
    try:
        dv = decode_video(data, cfg)
    except DecodeError as e:
        return ("error", str(e))
    return ("ok", dv.indices, dv.total_frames, dv.replanned, dv.width, dv.height, dv.rotation, dv.frames.tobytes())


def _fast_path(data: bytes, cfg: DecodeConfig = SKIP):
    """What the skip pass alone returns (None = it declined) and the plan it was given."""
    dl = D._Deadline(60)
    c = D._open(data, cfg, dl)
    p = D._probe(c, cfg, dl)
    if p.frames_from != "metadata":
        c.close()
        c = None
    idx = D._sample_indices(p.total_frames, p.fps, cfg, "plan")
    return D._decode_pass_skip_nonref(data, p.stream_index, idx, cfg, dl, container=c), p.total_frames


@pytest.mark.parametrize("name", sorted(H264))
def test_h264_identical_and_fast(name):
    data = H264[name]()
    assert _outcome(data, SKIP) == _outcome(data, FULL)
    fast, total = _fast_path(data)
    if name == "open_gop":
        return  # identical either way; the guard may decline leading frames
    assert fast is not None, "ordinary H.264 must take the skip path"
    if name == "nonref_b":
        assert fast[1]["frames_decoded"] < total * 0.6, fast[1]  # 3 of 4 frames are non-reference B-frames
    if name == "no_b":
        assert fast[1]["frames_decoded"] >= max(D._sample_indices(total, 24.0, SKIP, "plan"))  # nothing to skip


@pytest.mark.parametrize("path", SAMPLES + SHARED, ids=lambda p: p.name)
def test_real_clips_identical_and_fast(path):
    data = path.read_bytes()
    assert _outcome(data, SKIP) == _outcome(data, FULL)
    assert _fast_path(data)[0] is not None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_media_same_outcome(case):
    data = case_bytes(case.name)
    assert _outcome(data, SKIP) == _outcome(data, FULL)


def test_declines_what_it_does_not_cover(monkeypatch):
    vp9 = encode(160, 96, 12, 24, codec="libvpx-vp9", fmt="webm")
    assert _fast_path(vp9)[0] is None  # not H.264
    h264 = H264["nonref_b"]()
    assert _fast_path(h264, DecodeConfig(skip_nonref=True, threads=2))[0] is None  # frame threading
    assert _fast_path(h264)[0] is not None
    # declined -> exactly one full pass, same frames as with the option off
    calls = []
    full = D._decode_pass
    monkeypatch.setattr(D, "_decode_pass", lambda *a, **k: calls.append(1) or full(*a, **k))
    a = decode_video(vp9, SKIP)
    assert len(calls) == 1 and np.array_equal(a.frames, decode_video(vp9, FULL).frames)
    calls.clear()
    decode_video(h264, SKIP)
    assert calls == []  # taken: no full pass at all


def test_skip_nonref_is_the_default():
    """Issue 15: on by default (byte-identical on a 278-clip real corpus plus 30 damaged or unusual files, the same
    6 errors; 1.26x less decode time); `skip_nonref: false` is the full pass."""
    assert DecodeConfig().skip_nonref is True
    assert FULL.skip_nonref is False and SKIP.skip_nonref is True
