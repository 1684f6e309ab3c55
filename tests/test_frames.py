"""pipeline.vs2.frames: the qwen-vl-utils 0.0.14 frame plan, with hand-computed expectations, then (when
qwen_vl_utils is importable) an exhaustive-ish comparison against the real `vision_process` functions."""

from __future__ import annotations

import math
import types

import pytest

from pipeline.config import DecodeConfig
from pipeline.vs2.frames import (
    FramePlan,
    ceil_by_factor,
    floor_by_factor,
    frame_indices,
    frame_pixel_bounds,
    plan_frames,
    round_by_factor,
    smart_nframes,
    smart_resize,
)

CFG = DecodeConfig()
NTSC = 30000 / 1001  # 29.97...


def test_factor_rounding():
    assert round_by_factor(42, 28) == 56  # 1.5 -> 2 (Python round: half to even)
    assert round_by_factor(70, 28) == 56  # 2.5 -> 2 (half to even, as upstream)
    assert round_by_factor(13, 28) == 0
    assert ceil_by_factor(29, 28) == 56 and ceil_by_factor(28, 28) == 28
    assert floor_by_factor(55.9, 28) == 28 and floor_by_factor(3, 2) == 2 and floor_by_factor(3.99, 2) == 2


# --- smart_nframes / frame_indices ------------------------------------------------------------------

@pytest.mark.parametrize("total,fps,n,idx", [
    # 1.5 s at 24 fps: 36/24*2 = 3 -> raised to min_frames 4
    (36, 24, 4, [0, 12, 23, 35]),  # linspace(0,35,4) = 0, 11.67, 23.33, 35
    # one frame short of a pair: 71/24*2 = 5.92 -> floored to 4; 72 frames give exactly 6
    (71, 24, 4, [0, 23, 47, 70]),
    (72, 24, 6, [0, 14, 28, 43, 57, 71]),
    # shorter than min_frames: capped by floor2(total)
    (5, 24, 4, [0, 1, 3, 4]),
    (3, 24, 2, [0, 2]),
    (2, 24, 2, [0, 1]),
    # 5 s at 24 fps (120 frames) -> 10 frames (the doc's example)
    (120, 24, 10, [0, 13, 26, 40, 53, 66, 79, 93, 106, 119]),
    # 29.97 fps: 150 frames -> 10.01 -> 10; 149 frames -> 9.94 -> 8
    (150, NTSC, 10, [0, 17, 33, 50, 66, 83, 99, 116, 132, 149]),
    (149, NTSC, 8, [0, 21, 42, 63, 85, 106, 127, 148]),
    # 8 fps CogVideoX clip: 49/8*2 = 12.25 -> 12
    (49, 8, 12, [0, 4, 9, 13, 17, 22, 26, 31, 35, 39, 44, 48]),
    # 2 s at 10 fps (Open-Sora)
    (20, 10, 4, [0, 6, 13, 19]),
])
def test_nframes_and_indices(total, fps, n, idx):
    assert smart_nframes(total, fps, CFG) == n
    assert frame_indices(total, n) == idx


def test_long_clip_hits_the_768_cap():
    # 400 s at 30 fps: 12000 frames -> 800 -> capped at 768
    assert smart_nframes(12000, 30, CFG) == 768
    idx = frame_indices(12000, 768)
    assert len(idx) == 768 and idx[:4] == [0, 16, 31, 47] and idx[-1] == 11999  # step 11999/767 = 15.644
    assert all(b > a for a, b in zip(idx, idx[1:]))


@pytest.mark.parametrize("total,fps", [(1, 24), (0, 24), (1, 1)])
def test_too_few_frames_raise(total, fps):
    with pytest.raises(ValueError, match="nframes should in interval"):
        smart_nframes(total, fps, CFG)


@pytest.mark.parametrize("fps", [0, -1, float("nan")])
def test_bad_fps_raises(fps):
    with pytest.raises(ValueError):
        smart_nframes(100, fps, CFG)


def test_custom_fps_min_max():
    cfg = DecodeConfig(fps=4.0, min_frames=5, max_frames=15)
    assert smart_nframes(120, 24, cfg) == 14  # 20 -> max floor2(min(15, 120)) = 14
    assert smart_nframes(12, 24, cfg) == 6  # 2 -> min ceil2(5) = 6


# --- pixel bounds and smart_resize -------------------------------------------------------------------

def test_pixel_bounds_short_clip_is_per_frame_cap():
    assert frame_pixel_bounds(10, CFG) == (100352, 602112)


def test_pixel_bounds_long_clip_total_budget_binds():
    # 90,316,800 / 768 * 2 = 235,200 < 602,112
    assert frame_pixel_bounds(768, CFG) == (100352, 235200.0)
    # budget below 1.05 * min: floored at int(100352 * 1.05) = 105369
    assert frame_pixel_bounds(768, DecodeConfig(total_pixels=10_000_000)) == (100352, 105369)


@pytest.mark.parametrize("h,w,expected", [
    (720, 1280, (560, 1008)),  # 728x1288 > max -> beta = sqrt(921600/602112) = 1.2372 -> floor28(581.96), floor28(1034.6)
    (1280, 720, (1008, 560)),  # portrait
    (752, 1360, (560, 1036)),  # VideoAlign 1360x752
    (384, 688, (392, 700)),  # rounds up to 392x700 = 274,400: inside the bounds
    (480, 720, (476, 728)),  # CogVideoX
    (512, 512, (504, 504)),  # Open-Sora
    (159, 287, (252, 448)),  # 168x280 < min -> beta = sqrt(100352/45633) = 1.4829 -> ceil28(235.8), ceil28(425.6)
    (48, 64, (280, 392)),  # tiny: upscaled to >= min_pixels (109,760)
    (240, 320, (280, 392)),
    (10, 1500, (28, 3892)),  # ratio 150: short side clamps to one patch row
])
def test_smart_resize_hand_computed(h, w, expected):
    got = smart_resize(h, w, 28, 100352, 602112)
    assert got == expected
    assert got[0] % 28 == 0 and got[1] % 28 == 0
    assert 100352 <= got[0] * got[1] <= 602112


def test_smart_resize_long_clip_budget():
    # 1280x720 with the 768-frame budget: beta = sqrt(921600/235200) = 1.9795 -> floor28(363.7)=336, floor28(646.6)=644
    assert smart_resize(720, 1280, 28, 100352, 235200.0) == (336, 644)


def test_smart_resize_aspect_ratio_error():
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200"):
        smart_resize(10, 2010, 28, 100352, 602112)
    assert smart_resize(10, 2000, 28, 100352, 602112)[0] == 28  # exactly 200 is allowed


def test_smart_resize_defaults_are_image_bounds():
    assert smart_resize(1000, 1000) == (1008, 1008)  # image max 16384*784 not binding
    with pytest.raises(ValueError):
        smart_resize(100, 100, 28, min_pixels=1000, max_pixels=10)


# --- plan_frames ---------------------------------------------------------------------------------------

def test_plan_5s_720p24():
    p = plan_frames(120, 24, 720, 1280, CFG)
    assert p == FramePlan(indices=[0, 13, 26, 40, 53, 66, 79, 93, 106, 119], out_height=560, out_width=1008, nframes=10)
    # tokens: (n/2) * (H/28) * (W/28) = 5 * 20 * 36 = 3600 (docs/videoscore2.md 2b)
    assert p.nframes // 2 * (p.out_height // 28) * (p.out_width // 28) == 3600


def test_plan_400s_720p30():
    p = plan_frames(12000, 30, 720, 1280, CFG)
    assert p.nframes == 768 and len(p.indices) == 768
    assert (p.out_height, p.out_width) == (336, 644)
    assert p.nframes * p.out_height * p.out_width <= CFG.total_pixels * 2  # budget holds (per frame pair)


def test_plan_rejects_zero_size():
    # ratio 200 under a tight budget: upstream smart_resize floors the short side to 0
    cfg = DecodeConfig(total_pixels=10_000_000)
    assert smart_resize(30, 6000, 28, 100352, 105369)[0] == 0
    with pytest.raises(ValueError, match="resizes to"):
        plan_frames(12000, 30, 30, 6000, cfg)


# --- against the real qwen-vl-utils 0.0.14 -------------------------------------------------------------

@pytest.fixture(scope="module")
def vp():
    mod = pytest.importorskip("qwen_vl_utils.vision_process")
    return mod


FPS_GRID = (1, 7.5, 8, 10, 12, 15, 16, 23.976, 24, 25, NTSC, 30, 50, 59.94, 60, 120)


def test_matches_qwen_smart_nframes(vp):
    checked = 0
    for total in list(range(0, 400)) + list(range(400, 30000, 97)):
        for fps in FPS_GRID:
            try:
                want = vp.smart_nframes({"fps": 2.0}, total_frames=total, video_fps=fps)
            except ValueError:
                with pytest.raises(ValueError):
                    smart_nframes(total, fps, CFG)
                continue
            assert smart_nframes(total, fps, CFG) == want, (total, fps)
            checked += 1
    assert checked > 1000


def test_matches_qwen_smart_nframes_custom(vp):
    cfg = DecodeConfig(fps=3.0, min_frames=5, max_frames=33)
    for total in range(0, 300):
        for fps in (8, 24, NTSC):
            ele = {"fps": 3.0, "min_frames": 5, "max_frames": 33}
            try:
                want = vp.smart_nframes(ele, total_frames=total, video_fps=fps)
            except ValueError:
                with pytest.raises(ValueError):
                    smart_nframes(total, fps, cfg)
                continue
            assert smart_nframes(total, fps, cfg) == want, (total, fps)


SIZES = [(h, w) for h in (16, 48, 144, 159, 240, 360, 384, 480, 512, 576, 720, 752, 768, 1080, 1280, 1920, 2160)
         for w in (16, 64, 287, 320, 480, 640, 688, 720, 854, 960, 1024, 1280, 1360, 1920, 3840)]


def test_matches_qwen_smart_resize(vp):
    bounds = [(100352, 602112), (100352, 235200.0), (100352, 105369), (3136, 12845056)]
    for h, w in SIZES + [(10, 2000), (30, 6000), (1, 150)]:
        for lo, hi in bounds:
            try:
                want = vp.smart_resize(h, w, 28, lo, hi)
            except ValueError:
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(h, w, 28, lo, hi)
                continue
            assert smart_resize(h, w, 28, lo, hi) == want, (h, w, lo, hi)
    for h, w in [(10, 2010), (5000, 20)]:
        with pytest.raises(ValueError):
            vp.smart_resize(h, w, 28, 100352, 602112)
        with pytest.raises(ValueError):
            smart_resize(h, w, 28, 100352, 602112)


def test_matches_qwen_frame_indices(vp):
    torch = pytest.importorskip("torch")
    for total in range(2, 3000):
        n = smart_nframes(total, 24, CFG)
        assert frame_indices(total, n) == torch.linspace(0, total - 1, n).round().long().tolist(), total
    # float32 torch.linspace drifts from the exact float64 result beyond ~12,000 frames (see frame_indices)
    for total in range(3000, 12000, 37):
        for fps in (8, NTSC, 60):
            n = smart_nframes(total, fps, CFG)
            assert frame_indices(total, n) == torch.linspace(0, total - 1, n).round().long().tolist(), total


def test_matches_qwen_fetch_video_plan(vp, monkeypatch):
    """Run the real `fetch_video` with a stub reader (no video is read) and a stub resize that only records
    the target size: the indices, frame count and resized size must equal plan_frames'."""
    torch = pytest.importorskip("torch")
    state: dict = {}

    def fake_reader(ele):
        total, fps, h, w = state["total"], state["fps"], state["h"], state["w"]
        n = vp.smart_nframes(ele, total_frames=total, video_fps=fps)
        idx = torch.linspace(0, total - 1, n).round().long().tolist()
        video = torch.zeros(1, 3, h, w, dtype=torch.uint8).expand(n, 3, h, w)
        return video, {"fps": fps, "frames_indices": idx, "total_num_frames": total}, n / total * fps

    def fake_resize(video, size, interpolation=None, antialias=None):
        assert antialias is True and interpolation == vp.InterpolationMode.BICUBIC
        return torch.zeros(1, 1, 1, 1).expand(video.shape[0], 3, size[0], size[1])

    monkeypatch.setattr(vp, "get_video_reader_backend", lambda: "stub")
    monkeypatch.setitem(vp.VIDEO_READER_BACKENDS, "stub", fake_reader)
    monkeypatch.setattr(vp, "transforms", types.SimpleNamespace(functional=types.SimpleNamespace(resize=fake_resize)))

    cases = [(t, f) for t in (2, 3, 20, 36, 49, 71, 126, 149, 1800, 12000) for f in (8, 24, NTSC)]
    sizes = [(720, 1280), (1280, 720), (752, 1360), (159, 287), (48, 64), (480, 720), (2160, 3840), (30, 6000)]
    for total, fps in cases:
        for h, w in sizes:
            state.update(total=total, fps=fps, h=h, w=w)
            try:
                (video, meta), _ = vp.fetch_video({"video": "stub.mp4", "fps": 2.0}, return_video_sample_fps=True,
                                                  return_video_metadata=True)
            except ValueError:
                with pytest.raises(ValueError):
                    plan_frames(total, fps, h, w, CFG)
                continue
            if video.shape[2] == 0 or video.shape[3] == 0:
                with pytest.raises(ValueError):
                    plan_frames(total, fps, h, w, CFG)
                continue
            p = plan_frames(total, fps, h, w, CFG)
            assert (p.nframes, p.out_height, p.out_width) == tuple(video.shape[i] for i in (0, 2, 3)), (total, fps, h, w)
            assert p.indices == meta["frames_indices"]
            assert math.isclose(frame_pixel_bounds(p.nframes, CFG)[1],
                                max(min(602112, 128000 * 28 * 28 * 0.9 / p.nframes * 2), int(100352 * 1.05)))
