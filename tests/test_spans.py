"""Clip spans (issue 11, item 3): parsing, the qwen-vl-utils 0.0.14 `video_start`/`video_end` rule, parity with
its decord reader on the real clips (spans in the middle and near both ends), keyframe seeking that gives
exactly the frames of the sequential decode, and bad spans as decode error rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DecodeConfig
from pipeline.spans import SpanError, parse_spans, parse_time, span_label
from pipeline.stages.decode import DecodeStage
from pipeline.video.decode import DecodeError, _Deadline, _decode_pass, probe_video
from pipeline.video.seek import _seek_pass, decode_span
from pipeline.vs2.frames import span_frame_range, span_indices
from tests.media import encode_video

vp = pytest.importorskip("qwen_vl_utils.vision_process")
pytest.importorskip("decord")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
MEAN_TOL, P99_TOL = 3.0, 24.0


def _clips() -> list[Path]:
    manifest = SHARED / "manifest.jsonl"
    assert manifest.exists(), f"real clips missing: {manifest}"
    return [SHARED / json.loads(l)["file"] for l in manifest.read_text().splitlines() if l.strip()]


def test_parse_times_and_panda70m_lists():
    assert parse_time("0:00:05.005") == pytest.approx(5.005)
    assert parse_time("1:02:03.5") == 3723.5 and parse_time("02:03.25") == 123.25
    assert parse_time(3) == 3.0 and parse_time("2.5") == 2.5 and parse_time("") is None and parse_time(None) is None
    assert parse_time(float("nan")) is None
    for bad in ("soon", "1:2:3:4", True, float("inf")):
        with pytest.raises(SpanError):
            parse_time(bad)
    spans = parse_spans("[['0:00:00.000', '0:00:05.005'], ['0:00:05.005', '0:00:10.010']]")
    assert spans == [(0.0, pytest.approx(5.005)), (pytest.approx(5.005), pytest.approx(10.01))]
    assert parse_spans([[1, 2.5]]) == [(1.0, 2.5)] and parse_spans("[[1, 2]]") == [(1.0, 2.0)]
    with pytest.raises(SpanError, match="not a \\[start, end\\] pair"):
        parse_spans("[[1, 2, 3]]")
    with pytest.raises(SpanError, match="not a list"):
        parse_spans("__import__('os').system('true')")  # literal_eval only: never evaluated
    assert span_label((None, None)) == "" and span_label((1.0, None)) == "1.0-" and span_label((0.5, 2)) == "0.5-2"


def test_frame_range_matches_qwen_vl_utils_rule():
    """`span_frame_range` against qwen-vl-utils' own `calculate_video_frame_range` over a grid of clips and spans
    (inside, across and past both ends, empty and reversed): same frames, or both refuse."""
    cases = 0
    for total, fps in ((126, 24.0), (152, 30.0), (150, 30000 / 1001), (71, 8.0), (1441, 23.976)):
        dur = total / fps
        for s in (None, 0.0, 0.04, 1.0, 1.3333, dur / 2, dur - 0.5, dur - 0.01, dur, dur + 3, -1.0):
            for e in (None, 0.0, 0.5, 2.0, 2.7182, dur / 2 + 0.01, dur - 0.02, dur, dur + 10):
                ele = {k: v for k, v in (("video_start", s), ("video_end", e)) if v is not None}
                try:
                    ref = vp.calculate_video_frame_range(ele, total, fps)
                except ValueError:
                    ref = None
                try:
                    ours = span_frame_range(total, fps, s, e)
                except ValueError:
                    ours = None
                assert ours == ref, (total, fps, s, e)
                cases += 1
    assert cases == 5 * 11 * 9


def _official(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, dict]:
    vp.FORCE_QWENVL_VIDEO_READER = "decord"
    ele = {"video": str(path), "fps": 2.0}
    if start is not None:
        ele["video_start"] = start
    if end is not None:
        ele["video_end"] = end
    video, meta = vp.fetch_video(ele, return_video_metadata=True)
    return video.numpy(), meta


def _spans_for(path: Path) -> list[tuple[float | None, float | None]]:
    p = probe_video(path.read_bytes())
    dur = p["total_frames"] / p["fps"]
    return [(1.0, 3.0), (0.0, 1.6), (dur - 1.7, dur + 5.0), (None, 2.2), (dur / 3, None)]


@pytest.mark.parametrize("clip", _clips(), ids=lambda p: p.name)
def test_span_frames_match_qwen_vl_utils(clip):
    data = clip.read_bytes()
    for start, end in _spans_for(clip):
        ref, meta = _official(clip, start, end)
        ours = decode_span(data, DecodeConfig(), start, end)
        assert ours.indices == list(meta["frames_indices"]), (start, end)
        assert ours.frames.shape[0] == ref.shape[0] and ours.frames.shape[1:3] == ref.shape[2:4], (start, end)
        assert ours.total_frames == meta["total_num_frames"]
        ref_u8 = np.clip(np.round(ref), 0, 255).transpose(0, 2, 3, 1)
        diff = np.abs(ours.frames.astype(np.float64) - ref_u8)
        mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
        print(f"SPAN PARITY {clip.name} [{start}, {end}] {ours.frames.shape} mean={mean:.2f} p99={p99:.1f}")
        assert mean < MEAN_TOL and p99 < P99_TOL, (start, end, mean, p99)


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    """20 s at 24 fps, keyframe every 48 frames, B-frames on: spans start at every position in a GOP."""
    return encode_video(320, 180, 24, nframes=480, gop=48)


def test_seek_gives_the_sequential_decode_frames(long_clip):
    cfg = DecodeConfig()
    p = probe_video(long_clip)
    for start, end in ((0.0, 2.0), (1.99, 4.0), (2.0, 4.0), (2.05, 3.0), (7.3, 9.9), (15.0, None), (18.5, 25.0)):
        ours = decode_span(long_clip, cfg, start, end)
        idx = span_indices(p["total_frames"], p["fps"], start, end, cfg)
        seq, *_ = _decode_pass(long_clip, 0, idx, cfg, _Deadline(60))
        sought = _seek_pass(long_clip, 0, p["total_frames"], idx, cfg, _Deadline(60))
        assert sought is not None, "the keyframe seek was refused on a plain H.264 mp4"
        assert ours.indices == idx
        assert np.array_equal(sought[0], seq) and np.array_equal(ours.frames, seq), (start, end)  # = decoding from frame 0


def test_seek_works_with_skip_nonref(long_clip):
    a = decode_span(long_clip, DecodeConfig(), 9.0, 12.0)
    b = decode_span(long_clip, DecodeConfig(skip_nonref=True), 9.0, 12.0)
    assert a.indices == b.indices and np.array_equal(a.frames, b.frames)


def test_bad_spans_are_decode_errors(long_clip):
    for start, end, why in ((3.0, 3.0, "Start frame 72"), (5.0, 2.0, "exceeds end frame 48"), (25.0, 30.0, "Start frame 480"),
                            (19.99, None, "Start frame 480")):
        with pytest.raises(DecodeError, match=f"bad span \\[{start}, {end}\\] s: Invalid time range: .*{why}"):
            decode_span(long_clip, DecodeConfig(), start, end)
    # through the decode stage: error rows with error_stage decode, the others decoded
    batch = {c: np.array([None] * 3, dtype=object) for c in DecodeStage.INPUT_COLUMNS}
    batch.update(row_id=np.array(["a", "b", "c"], dtype=object), status=np.array(["ok"] * 3, dtype=object),
                 video=np.array([long_clip] * 3, dtype=object), start_s=np.array([1.0, 5.0, math.nan]),
                 end_s=np.array([3.0, 2.0, math.nan]))
    out = DecodeStage(DecodeConfig())(batch).to_pydict()
    assert out["status"] == ["ok", "error", "ok"] and out["error_stage"] == [None, "decode", None]
    assert out["error"][1].startswith("bad span [5.0, 2.0] s: Invalid time range")
    assert out["start_s"] == [1.0, 5.0, None] and out["end_s"] == [3.0, 2.0, None]
    assert out["num_frames"][0] == 4 and out["total_frames"][2] == 480 and out["total_frames"][0] == 49
