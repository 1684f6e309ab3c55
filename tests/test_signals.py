"""Signals (pipeline/video/signals.py) and the prefilter (pipeline/stages/prefilter.py, the decode stage's use of
them) on real media: the shared real clips and clips encoded here (still, black, flashing, very short, small).
Tolerances are the ones docs/signals.md documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import DecodeConfig, PREFILTER_PRESETS, PrefilterConfig, load_config
from pipeline.errors import ConfigError
from pipeline.stages.decode import DecodeStage
from pipeline.stages.prefilter import Prefilter
from pipeline.video.decode import decode_video
from pipeline.video.signals import (BLANK_STD, _DCT, area_resize, compute_signals, hamming, laplacian_variance, luma,
                                    phash)
from tests.signal_media import (FLASH_DIM, STILL, black_clip, encode_frames, flash_factor, flashing_clip, moving_clip,
                                real_clips, still_clip)

CFG = DecodeConfig()


@pytest.fixture(scope="module")
def real():
    """(name, bytes, decoded, signals) of every shared real clip."""
    out = []
    for p in real_clips():
        data = p.read_bytes()
        dv = decode_video(data, CFG)
        out.append((p.name, data, dv, compute_signals(dv.frames)))
    return out


# --- definitions on arrays ----------------------------------------------------------------------------------

def test_definitions_on_flat_frames():
    frames = np.stack([np.full((60, 80, 3), v, np.uint8) for v in (10, 50, 50, 20)])
    s = compute_signals(frames)
    diffs = [40, 0, 30]  # consecutive luma differences of grey frames = the grey step (weights sum to 1)
    assert s.motion == pytest.approx(np.mean(diffs), abs=1e-3)
    assert s.flicker == pytest.approx(np.mean(diffs), abs=1e-3)
    assert s.blank_fraction == 1.0 and s.sharpness == 0.0
    assert s.phash == "8000000000000000"  # only the DC coefficient is above the median of a flat picture
    assert compute_signals(np.zeros((3, 60, 80, 3), np.uint8)).phash == "0000000000000000"


def test_motion_is_local_change_flicker_is_global():
    rng = np.random.default_rng(0)
    tex = rng.integers(40, 200, (120, 160, 3), dtype=np.uint8)
    brighter = tex + 20  # no overflow: 40..219
    s = compute_signals(np.stack([tex, brighter]))
    assert s.motion == pytest.approx(20, abs=0.01) and s.flicker == pytest.approx(20, abs=0.01)
    shifted = np.roll(tex, 8, axis=1)  # content moves, brightness does not
    s = compute_signals(np.stack([tex, shifted]))
    assert s.motion > 20 and s.flicker < 1.0
    half_blank = np.stack([tex, np.full_like(tex, 128)])
    assert compute_signals(half_blank).blank_fraction == 0.5


def test_blank_threshold_is_luma_std():
    rng = np.random.default_rng(1)
    base = np.full((64, 64, 3), 100, np.float32)
    below = (base + rng.normal(0, BLANK_STD * 0.5, (64, 64, 1))).clip(0, 255).astype(np.uint8)
    above = (base + rng.normal(0, BLANK_STD * 2.0, (64, 64, 1))).clip(0, 255).astype(np.uint8)
    assert compute_signals(below[None]).blank_fraction == 1.0
    assert compute_signals(above[None]).blank_fraction == 0.0


def test_dct_and_area_resize_match_their_formulas():
    n = _DCT.shape[0]
    x = np.random.default_rng(2).random(n)
    direct = [2 * sum(x[i] * np.cos(np.pi * k * (2 * i + 1) / (2 * n)) for i in range(n)) for k in range(n)]
    assert np.allclose(_DCT @ x, direct)
    y = np.arange(64 * 96, dtype=np.float64).reshape(64, 96)
    small = area_resize(y, 32)
    assert small.shape == (32, 32) and small[0, 0] == pytest.approx(y[:2, :3].mean())
    assert small.mean() == pytest.approx(y.mean())


def test_sharpness_drops_with_blur(real):
    frame = real[0][2].frames[0]
    y = luma(frame)
    blurred = (y[:-2, :-2] + y[1:-1, :-2] + y[2:, :-2] + y[:-2, 1:-1] + y[1:-1, 1:-1] + y[2:, 1:-1]
               + y[:-2, 2:] + y[1:-1, 2:] + y[2:, 2:]) / 9
    assert laplacian_variance(blurred) < 0.5 * laplacian_variance(y)


# --- real clips ---------------------------------------------------------------------------------------------

def test_real_clips_signals(real):
    assert len(real) == 16
    for name, _, dv, s in real:
        assert s.blank_fraction == 0.0, name
        assert 1.0 <= s.motion <= 255 and 0 <= s.flicker <= s.motion, (name, s)  # flicker <= motion always
        assert s.sharpness > 0 and len(s.phash) == 16 and int(s.phash, 16) >= 0
    hashes = [s.phash for *_, s in real]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) > 10  # different clips: far apart (~32 of 64 bits is unrelated)


def test_real_clips_phash_and_motion_survive_reencoding(real):
    """docs/signals.md tolerances: the same frames re-encoded at crf 35, or the picture at half size, keep the
    phash within 6 bits; motion moves by at most 30% + 0.5 level (the encoder smooths some change away)."""
    for name, _, dv, s in real:
        h, w = dv.frames.shape[1:3]
        again = decode_video(encode_frames(lambda i: dv.frames[i], len(dv.frames), w, h, fps=2, crf=35), CFG)
        s2 = compute_signals(again.frames)
        assert hamming(s.phash, s2.phash) <= 6, name
        assert abs(s2.motion - s.motion) <= 0.3 * s.motion + 0.5, (name, s.motion, s2.motion)
        mid = dv.frames[len(dv.frames) // 2]
        assert hamming(s.phash, phash(luma(mid[::2, ::2]))) <= 6, name


def test_real_clips_pass_the_corpus_preset(real):
    pre = Prefilter(PrefilterConfig(preset="corpus"))
    rows = [_probe_row(dv, s) for _, _, dv, s in real]
    assert pre.failed(rows) == [None] * len(rows)


# --- generated clips ----------------------------------------------------------------------------------------

def _probe_row(dv, s) -> dict:
    return {"duration_s": dv.duration_s, "fps": dv.src_fps, "src_width": dv.src_width, "src_height": dv.src_height,
            "src_frames": dv.total_frames, **s.as_dict()}


def test_generated_clips_signals():
    still = compute_signals(decode_video(still_clip(), CFG).frames)
    assert still.motion <= 0.2 and still.flicker <= 0.05 and still.blank_fraction == 0.0
    black = compute_signals(decode_video(black_clip(), CFG).frames)
    assert black.blank_fraction == 1.0 and black.motion <= 0.05 and black.phash == "0000000000000000"
    moving = compute_signals(decode_video(moving_clip(), CFG).frames)
    assert moving.motion > 10 and moving.flicker < 0.3 * moving.motion and moving.blank_fraction == 0.0
    # flashing: the whole picture switches between full and FLASH_DIM brightness; the expected flicker follows
    # from which phase each sampled frame (the plan's indices) falls on
    dv = decode_video(flashing_clip(), CFG)
    flash = compute_signals(dv.frames)
    mean_luma = float(luma(STILL).mean())
    phases = [flash_factor(i) for i in dv.indices]
    assert len(set(phases)) == 2
    expected = float(np.mean(np.abs(np.diff(phases)))) * mean_luma
    assert expected > 0.2 * (1 - FLASH_DIM) * mean_luma
    assert flash.flicker == pytest.approx(expected, abs=1.0)
    assert flash.flicker > 0.8 * flash.motion and flash.blank_fraction == 0.0
    # the still, flashing picture keeps the still's perceptual hash (its middle frame is the same picture)
    assert hamming(flash.phash, still.phash) <= 6


def test_very_short_clip_probe():
    dv = decode_video(moving_clip(seconds=0.5), CFG)
    assert dv.duration_s == pytest.approx(0.5) and dv.total_frames == 12 and dv.src_fps == 24
    assert (dv.src_width, dv.src_height) == (640, 360)


# --- the prefilter ------------------------------------------------------------------------------------------

def test_corpus_preset_conditions():
    pre = Prefilter(PrefilterConfig(preset="corpus"))
    assert pre.conditions == ["duration_s >= 1", "least(src_width, src_height) >= 240", "motion >= 0.5",
                              "blank_fraction < 0.5"]
    assert PrefilterConfig(preset="corpus").expression() == PREFILTER_PRESETS["corpus"]
    assert not Prefilter(PrefilterConfig()).active and Prefilter(None).failed([{}]) == [None]


def test_prefilter_reports_every_failed_condition_and_null_fails():
    pre = Prefilter(PrefilterConfig(preset="corpus", where="sharpness > 1 or phash = 'x'"))
    assert pre.conditions[-1] == "(sharpness > 1) OR (phash = 'x')"  # one outer pair dropped, the inner kept
    ok = {"duration_s": 5.0, "fps": 24.0, "src_width": 640, "src_height": 360, "src_frames": 120, "motion": 3.0,
          "flicker": 0.1, "blank_fraction": 0.0, "sharpness": 50.0, "phash": "ab"}
    short_static = {**ok, "duration_s": 0.5, "motion": 0.1}
    null_motion = {**ok, "motion": None}
    assert pre.failed([ok, short_static, null_motion]) == [
        None, "duration_s >= 1; motion >= 0.5", "motion >= 0.5"]


@pytest.mark.parametrize("where, message", [
    ("width > 3", "unknown column 'width'"),
    ("motion > (SELECT 1)", "subquery"),
    ("read_csv('/etc/passwd') IS NULL", "not allowed"),
    ("motion > 1; DROP TABLE scores", "several statements|not a valid expression"),
    ("1 = 1", "does not use any column"),
])
def test_prefilter_where_is_checked_at_config_load(where, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["input.shards=x", f"output.path={tmp_path}", f"prefilter.where={json.dumps(where)}"])
    assert "prefilter.where" in str(e.value) and "\n" not in str(e.value)


def test_prefilter_changes_the_run_id(tmp_path):
    base = ["input.shards=x", f"output.path={tmp_path}"]
    ids = {load_config(None, base + extra).resolved_run_id() for extra in (
        [], ["prefilter.preset=corpus"], ["prefilter.where='motion >= 1'"], ["prefilter.preset=corpus", "prefilter.where='motion >= 1'"])}
    assert len(ids) == 4


# --- the decode stage ---------------------------------------------------------------------------------------

def _row(i: int, video: bytes, status: str = "ok", error_stage=None, error=None) -> dict:
    return {"row_id": f"r{i}", "key": f"k{i}", "shard": "mem://shard-000000.tar", "shard_group": "00000",
            "prompt": f"prompt {i}", "meta_json": None, "video": video, "status": status,
            "error_stage": error_stage, "error": error}


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    batch = {}
    for c in DecodeStage.INPUT_COLUMNS:
        col = np.empty(len(rows), dtype=object)
        for i, r in enumerate(rows):
            col[i] = r.get(c)  # source_url, start_s, end_s: not set here (whole videos from shards)
        batch[c] = col
    return batch


def test_decode_stage_signals_and_prefilter():
    real_bytes = real_clips()[4].read_bytes()
    rows = [_row(0, real_bytes), _row(1, still_clip()), _row(2, black_clip()), _row(3, moving_clip(seconds=0.5)),
            _row(4, moving_clip(width=320, height=200)), _row(5, b"not a video"), _row(6, b"", "error", "read", "no video member"),
            _row(7, flashing_clip())]
    out = DecodeStage(CFG, PrefilterConfig(preset="corpus"))(_batch(rows))
    assert out.column_names == list(DecodeStage.OUTPUT_COLUMNS)
    d = {r["key"]: r for r in out.drop_columns(["frames"]).to_pylist()}
    frames = out.column("frames").combine_chunks().to_numpy(zero_copy_only=False)
    assert [d[f"k{i}"]["status"] for i in range(8)] == ["ok", "skipped", "skipped", "skipped", "skipped", "error", "error", "ok"]
    assert d["k1"]["error"] == "motion >= 0.5" and d["k2"]["error"] == "motion >= 0.5; blank_fraction < 0.5"
    assert d["k3"]["error"] == "duration_s >= 1" and d["k4"]["error"] == "least(src_width, src_height) >= 240"
    for k in ("k1", "k2", "k3", "k4"):
        assert d[k]["error_stage"] == "prefilter"
        assert frames[int(k[1])].shape == (0, 0, 0, 3)  # no frames travel on to the scoring stage
        assert d[k]["motion"] is not None and d[k]["phash"] is not None  # the signals stay
    assert frames[0].shape[0] == d["k0"]["num_frames"] > 0
    assert d["k0"]["src_width"] == 512 and d["k0"]["fps"] == d["k0"]["src_fps"] and d["k0"]["src_frames"] == d["k0"]["total_frames"]
    for k in ("k5", "k6"):  # not decoded: probe and signal columns null
        assert all(d[k][c] is None for c in ("fps", "src_width", "src_height", "src_frames", "motion", "flicker",
                                               "blank_fraction", "sharpness", "phash"))
    assert d["k6"]["error_stage"] == "read" and d["k5"]["error_stage"] == "decode"
    # without a prefilter the same batch is all decoded: nothing skipped, same signals
    plain = DecodeStage(CFG)(_batch(rows)).drop_columns(["frames"]).to_pylist()
    assert [r["status"] for r in plain].count("skipped") == 0
    assert [r["motion"] for r in plain] == [d[f"k{i}"]["motion"] for i in range(8)]
