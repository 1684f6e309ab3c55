"""pipeline.video.decode and the decode stage: real clips encoded in memory with PyAV, the bundled sample videos, bad media, the
DecodeStage batch contract, and one real Ray Data run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import DecodeConfig
from pipeline.video.decode import DecodedVideo, DecodeError, decode_video, probe_video
from pipeline.stages.decode import DecodeStage
from pipeline.vs2.frames import frame_indices, plan_frames, smart_nframes
from tests.media import (
    SHARED_VIDEOS,
    decode_all_frames,
    encode_audio_only,
    encode_vfr_video,
    encode_video,
    shared_manifest,
    synthetic_frame,
)

CFG = DecodeConfig()


@pytest.fixture(scope="module")
def clip_320():
    """1.5 s, 320x240, 24 fps H.264 (B-frames on): plan = 4 frames [0,12,23,35] upscaled to 392x280."""
    return encode_video(320, 240, 24, seconds=1.5)


@pytest.fixture(scope="module")
def clip_720():
    """36 frames of 1280x720 at 24 fps, GOP 12: plan = 4 frames downscaled to 1008x560."""
    return encode_video(1280, 720, 24, nframes=36, gop=12)


def _check_shape(dv: DecodedVideo, n: int, h: int, w: int) -> None:
    assert isinstance(dv.frames, np.ndarray)
    assert dv.frames.shape == (n, h, w, 3)
    assert dv.frames.dtype == np.uint8
    assert dv.frames.flags["C_CONTIGUOUS"]
    assert (dv.height, dv.width) == (h, w)
    assert len(dv.indices) == n


# --- planned count, size, indices ------------------------------------------------------------------------

@pytest.mark.parametrize("kw,total,fps,n,hw", [
    (dict(width=320, height=240, fps=24, nframes=36), 36, 24, 4, (280, 392)),
    (dict(width=320, height=240, fps=24, nframes=71), 71, 24, 4, (280, 392)),  # 5.92 -> 4
    (dict(width=256, height=144, fps=30000 / 1001, nframes=149), 149, 30000 / 1001, 8, (252, 448)),
    (dict(width=176, height=144, fps=8, nframes=49), 49, 8, 12, (308, 364)),
    (dict(width=144, height=256, fps=25, nframes=60), 60, 25, 4, (448, 252)),  # portrait
    (dict(width=64, height=48, fps=10, nframes=3), 3, 10, 2, (280, 392)),  # tiny + shorter than min_frames
    (dict(width=160, height=96, fps=30, nframes=17, container="matroska"), 17, 30, 4, (252, 420)),
    (dict(width=160, height=96, fps=24, nframes=30, container="webm", codec="libvpx-vp9"), 30, 24, 4, (252, 420)),
    (dict(width=160, height=96, fps=10, nframes=20, container="gif", codec="gif", pix_fmt="rgb8"), 20, 10, 4, (252, 420)),
    (dict(width=160, height=96, fps=10, nframes=20, container="avi", codec="mpeg4"), 20, 10, 4, (252, 420)),
    (dict(width=160, height=96, fps=10, nframes=20, pix_fmt="yuv444p"), 20, 10, 4, (252, 420)),
])
def test_plan_matches_frames_module(kw, total, fps, n, hw):
    data = encode_video(**kw)
    dv = decode_video(data, CFG)
    plan = plan_frames(total, fps, kw["height"], kw["width"], CFG)
    assert (plan.nframes, plan.out_height, plan.out_width) == (n, *hw)
    _check_shape(dv, n, *hw)
    assert dv.indices == plan.indices == frame_indices(total, n)
    assert dv.total_frames == total
    assert dv.src_fps == pytest.approx(fps, rel=1e-3)
    assert dv.duration_s == pytest.approx(total / fps, rel=1e-3)
    assert not dv.replanned


def test_frames_without_container_count_are_counted_from_packets():
    data = encode_video(160, 96, 30, nframes=17, container="matroska")
    p = probe_video(data)
    assert p["frames_from"] == "packets" and p["total_frames"] == 17
    assert probe_video(encode_video(160, 96, 30, nframes=17))["frames_from"] == "metadata"


# --- pixel content ---------------------------------------------------------------------------------------

def _assert_kept_frames_match_full_decode(data: bytes, dv: DecodedVideo) -> None:
    """Independent path: decode *every* frame, pick the kept indices, resize each with a fresh swscale
    context (same kernel), and also with torchvision's antialiased bicubic from full-resolution RGB."""
    frames = decode_all_frames(data)
    assert len(frames) == dv.total_frames
    for pos, fi in enumerate(dv.indices):
        ref = frames[fi].reformat(width=dv.width, height=dv.height, format="rgb24", interpolation="BICUBIC").to_ndarray()
        got = dv.frames[pos].astype(np.int16)
        assert np.abs(got - ref).max() <= 1, (pos, fi)
        # the kept frame is that frame and not a neighbour: neighbours are far away in this moving content
        for nb in (fi - 1, fi + 1):
            if 0 <= nb < len(frames):
                other = frames[nb].reformat(width=dv.width, height=dv.height, format="rgb24", interpolation="BICUBIC").to_ndarray()
                assert np.abs(got - other).mean() > 5 * max(np.abs(got - ref).mean(), 0.1)


def test_pixels_match_independent_decode_upscale(clip_320):
    dv = decode_video(clip_320, CFG)
    _assert_kept_frames_match_full_decode(clip_320, dv)


def test_pixels_match_independent_decode_downscale(clip_720):
    dv = decode_video(clip_720, CFG)
    _check_shape(dv, 4, 560, 1008)
    _assert_kept_frames_match_full_decode(clip_720, dv)


def test_pixels_close_to_torchvision_antialiased_bicubic(clip_720):
    """swscale bicubic vs the reference kernel (torchvision bicubic, antialias=True) from the same RGB:
    close on average (exact parity is measured elsewhere)."""
    torch = pytest.importorskip("torch")
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    dv = decode_video(clip_720, CFG)
    frames = decode_all_frames(clip_720)
    for pos, fi in list(enumerate(dv.indices))[::3]:
        full = torch.from_numpy(frames[fi].to_ndarray(format="rgb24")).permute(2, 0, 1)
        tv = F.resize(full, [dv.height, dv.width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        diff = np.abs(dv.frames[pos].astype(np.int16) - tv.permute(1, 2, 0).numpy())
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8


def test_content_is_the_source_picture():
    """Sanity on absolute content: a decoded frame resembles the synthetic picture that was encoded."""
    data = encode_video(320, 240, 24, nframes=36, options={"crf": "10"})
    dv = decode_video(data, CFG)
    frames = decode_all_frames(data)
    for pos, fi in enumerate(dv.indices):
        src = synthetic_frame(fi, 320, 240)
        small = frames[fi].to_ndarray(format="rgb24")
        assert np.abs(small.astype(np.int16) - src).mean() < 4
        assert dv.frames[pos].mean() == pytest.approx(src.mean(), abs=4)


def test_threads_do_not_change_frames(clip_720):
    a = decode_video(clip_720, CFG)
    b = decode_video(clip_720, DecodeConfig(threads=2))
    c = decode_video(clip_720, DecodeConfig(threads=0))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.frames, c.frames)
    assert a.indices == b.indices == c.indices


# --- VFR, rotation, truncation ------------------------------------------------------------------------

def test_vfr_clip_uses_average_rate():
    times = [0, 0.1, 0.15, 0.5, 0.55, 0.6, 1.0, 1.9]
    data = encode_vfr_video(160, 96, times)
    dv = decode_video(data, CFG)
    assert dv.total_frames == 8
    assert dv.src_fps == pytest.approx(probe_video(data)["fps"])
    n = smart_nframes(8, dv.src_fps, CFG)
    assert dv.indices == frame_indices(8, n) and dv.frames.shape[0] == n


def test_rotation_reported_and_applied_on_request():
    data = encode_video(160, 96, 10, nframes=8, rotation=90)
    plain = decode_video(data, CFG)
    assert plain.rotation == 90
    _check_shape(plain, 4, 252, 420)  # default: coded orientation, like decord
    rot = decode_video(data, DecodeConfig(apply_rotation=True))
    _check_shape(rot, 4, 420, 252)  # displayed (portrait) orientation, planned on the displayed size
    assert np.array_equal(rot.frames, np.ascontiguousarray(np.rot90(plain.frames, 1, axes=(1, 2))))
    assert rot.frames.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_truncated_file_is_replanned_on_decoded_frames(keep):
    """A faststart mp4 cut short still claims 120 frames; the stream ends early, so the clip is planned
    again on the frames that really decode (what qwen-vl-utils' torchvision reader would see)."""
    data = encode_video(320, 240, 24, nframes=120, faststart=True)
    cut = data[: int(len(data) * keep)]
    assert probe_video(cut)["total_frames"] == 120
    dv = decode_video(cut, CFG)
    decodable = len(decode_all_frames(cut))
    assert dv.replanned and dv.total_frames == decodable < 120
    n = smart_nframes(decodable, 24, CFG)
    assert dv.indices == frame_indices(decodable, n)
    _check_shape(dv, n, 280, 392)
    _assert_kept_frames_match_full_decode(cut, dv)


def test_truncated_to_almost_nothing_is_an_error():
    data = encode_video(320, 240, 24, nframes=120, faststart=True)
    with pytest.raises(DecodeError):
        decode_video(data[:2500], CFG)


# --- bad media ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,data", [
    ("zero bytes", b""),
    ("garbage", bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))),
    ("text", b"this is a text file, not a video\n" * 40),
    ("json", json.dumps({"prompt": "a cat"}).encode()),
    ("audio only", None),
    ("mp4 without its index", None),
    ("not bytes", 12345),
])
def test_bad_media_raises_decode_error(name, data):
    if name == "audio only":
        data = encode_audio_only(1.0)
    elif name == "mp4 without its index":
        data = encode_video(160, 96, 24, nframes=24)[:-1500]  # moov is at the end
    with pytest.raises(DecodeError) as ei:
        decode_video(data, CFG)
    msg = str(ei.value)
    assert msg and "\n" not in msg


def test_video_with_audio_decodes():
    dv = decode_video(encode_video(160, 96, 10, nframes=20, with_audio=True), CFG)
    _check_shape(dv, 4, 252, 420)


def test_limits_are_checked_before_decoding():
    data = encode_video(320, 240, 24, nframes=48)
    with pytest.raises(DecodeError, match="max_decoded_pixels"):
        decode_video(data, DecodeConfig(max_decoded_pixels=320 * 240 - 1))
    with pytest.raises(DecodeError, match="max_duration_s"):
        decode_video(data, DecodeConfig(max_duration_s=1.5))
    mkv = encode_video(160, 96, 24, nframes=48, container="matroska")
    with pytest.raises(DecodeError, match="max_duration_s"):
        decode_video(mkv, DecodeConfig(max_duration_s=1.5))
    assert decode_video(data, DecodeConfig(max_decoded_pixels=320 * 240, max_duration_s=2.0)).frames.shape[0] == 4


def test_one_frame_video_is_an_error():
    with pytest.raises(DecodeError, match="cannot sample frames"):
        decode_video(encode_video(160, 96, 24, nframes=1), CFG)


# --- the bundled sample videos ---------------------------------------------------------------------------

def test_shared_real_clips_decode_with_expected_plan():
    rows = shared_manifest()
    assert len(rows) == 16
    for m in rows:
        data = (SHARED_VIDEOS / m["file"]).read_bytes()
        dv = decode_video(data, CFG)
        plan = plan_frames(m["nb_frames"], m["fps"], m["height"], m["width"], CFG)
        n = smart_nframes(m["nb_frames"], m["fps"], CFG)
        assert plan.nframes == n
        _check_shape(dv, n, plan.out_height, plan.out_width)
        assert dv.indices == plan.indices, m["file"]
        assert dv.total_frames == m["nb_frames"] and dv.src_fps == pytest.approx(m["fps"])
        assert dv.duration_s == pytest.approx(m["duration"], abs=1e-3)


# --- DecodeStage -------------------------------------------------------------------------------------------

def _row(i: int, video: bytes, status: str = "ok", error_stage=None, error=None) -> dict:
    return {"row_id": f"r{i}", "key": f"k{i}", "shard": "mem://shard-000000.tar", "shard_group": "00000",
            "prompt": f"prompt {i}", "meta_json": json.dumps({"i": i}), "video": video, "status": status,
            "error_stage": error_stage, "error": error, "source_url": None, "start_s": None, "end_s": None,
            "content_hash": None}


def _numpy_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    batch = {}
    for c in DecodeStage.INPUT_COLUMNS:
        col = np.empty(len(rows), dtype=object)
        for i, r in enumerate(rows):
            col[i] = r[c]
        batch[c] = col
    return batch


def test_stage_columns_declared():
    assert "video" in DecodeStage.INPUT_COLUMNS and "video" not in DecodeStage.OUTPUT_COLUMNS
    assert set(DecodeStage.OUTPUT_COLUMNS) == set(DecodeStage.output_types())
    for c in ("row_id", "key", "shard", "shard_group", "prompt", "meta_json", "status", "error_stage", "error"):
        assert c in DecodeStage.INPUT_COLUMNS and c in DecodeStage.OUTPUT_COLUMNS
    for c in ("frames", "patches", "frame_indices", "num_frames", "width", "height", "duration_s", "src_fps", "total_frames",
              "decode_s"):
        assert c in DecodeStage.OUTPUT_COLUMNS


def test_stage_batch(clip_320):
    rows = [_row(0, clip_320), _row(1, b"", "error", "read", "no video member"), _row(2, b"not a video at all"),
            _row(3, encode_video(160, 96, 10, nframes=20))]
    # an all-null column arrives from Ray as float NaN: it must come out as null strings
    batch = _numpy_batch(rows)
    batch["error_stage"][[0, 2, 3]] = np.nan
    out = DecodeStage(CFG)(batch)
    assert isinstance(out, pa.Table)
    assert out.column_names == list(DecodeStage.OUTPUT_COLUMNS)
    assert out.schema.field("frames").type == DecodeStage.output_types()["frames"]
    d = out.to_pydict()
    assert d["row_id"] == ["r0", "r1", "r2", "r3"] and d["meta_json"][2] == json.dumps({"i": 2})
    assert d["status"] == ["ok", "error", "error", "ok"]
    assert d["error_stage"] == [None, "read", "decode", None]
    assert d["error"][1] == "no video member" and "\n" not in d["error"][2] and d["error"][0] is None
    frames = out.column("frames").combine_chunks().to_numpy(zero_copy_only=False)
    assert frames[0].shape == (4, 280, 392, 3) and frames[3].shape == (4, 252, 420, 3)
    assert frames[1].shape == (0, 0, 0, 3) and frames[2].shape == (0, 0, 0, 3) and frames[2].dtype == np.uint8
    assert json.loads(d["frame_indices"][0]) == [0, 12, 23, 35] and d["frame_indices"][1] == ""
    assert d["num_frames"] == [4, 0, 0, 4] and d["width"] == [392, 0, 0, 420] and d["height"] == [280, 0, 0, 252]
    assert d["total_frames"] == [36, 0, 0, 20] and d["src_fps"][0] == 24.0 and d["duration_s"][3] == 2.0
    assert d["decode_s"][0] > 0 and d["decode_s"][1] == 0.0
    # same decode as the function
    assert np.array_equal(frames[0], decode_video(clip_320, CFG).frames)


def test_stage_patchify_ships_the_same_bytes_as_patches_instead_of_frames(clip_320):
    """decode.patchify: a decoded row carries its frames in the HF patch layout (`patches`, uint8) and empty frames;
    the bytes are the frames', permuted (exact inverse); signals, errors and prefilter-skipped rows are unchanged."""
    from ray.data.block import BlockAccessor

    from pipeline.config import PrefilterConfig
    from pipeline.vs2.processor import Patches, VideoProcessorSettings, patchify

    rows = [_row(0, clip_320), _row(1, b"not a video at all"), _row(2, encode_video(160, 96, 10, nframes=20)),
            _row(3, encode_video(320, 240, 10, nframes=20))]
    # the prefilter skips the 160x96 clip (shorter side < 100): skipped rows ship neither frames nor patches
    pf = PrefilterConfig(where="least(src_width, src_height) >= 100")
    plain = DecodeStage(CFG, pf)(_numpy_batch(rows))
    patched = DecodeStage(CFG, pf, patchify=True)(_numpy_batch(rows))
    assert patched.column_names == plain.column_names == list(DecodeStage.OUTPUT_COLUMNS)
    assert patched.schema == plain.schema and patched.schema.field("patches").type == DecodeStage.output_types()["patches"]
    a, b = plain.to_pydict(), patched.to_pydict()
    for c in plain.column_names:
        if c not in ("frames", "patches", "decode_s"):
            assert a[c] == b[c], c
    assert b["status"] == ["ok", "error", "skipped", "ok"]
    batch = BlockAccessor.for_block(patched).to_batch_format("numpy")  # what the scoring stage gets from Ray
    frames = plain.column("frames").combine_chunks().to_numpy(zero_copy_only=False)
    s = VideoProcessorSettings((0.5,) * 3, (0.5,) * 3, 1 / 255)
    for i in range(4):
        p, f = batch["patches"][i], frames[i]
        assert p.dtype == np.uint8 and p.ndim == 2 and p.shape[1] == 1176 and batch["frames"][i].size == 0
        if b["status"][i] != "ok":
            assert p.size == 0 and f.size == 0
            continue
        assert p.nbytes == f.nbytes  # one copy of the pixels in transit, never both
        np.testing.assert_array_equal(p, patchify(f, s)[0])
        shape = (b["num_frames"][i], b["height"][i], b["width"][i])
        np.testing.assert_array_equal(Patches(p, shape).frames(), f)


def test_config_patchify_follows_the_engine():
    from pipeline.config import ScoreConfig

    def cfg(**kw):
        over = {k: v for k, v in kw.items() if k != "patchify"}
        dec = {"patchify": kw["patchify"]} if "patchify" in kw else {}
        return ScoreConfig.model_validate({"input": {"shards": "x"}, "output": {"path": "/tmp/x"}, "decode": dec, "engine": over})

    assert cfg().decode_patchify()  # vLLM, numpy pre-processing, AsyncLLM: the default engine takes patches
    assert not cfg(video_processor="hf").decode_patchify() and not cfg(batches_in_flight=1).decode_patchify()
    assert not cfg(kind="transformers").decode_patchify()
    assert cfg(kind="transformers", patchify=True).decode_patchify() and not cfg(patchify=False).decode_patchify()
    assert cfg(patchify=True).scoring_fingerprint() == cfg(patchify=False).scoring_fingerprint()  # not row-affecting


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_data_map_batches(ray_local, clip_320):
    import ray.data

    from pipeline.stages.decode import _frames_type

    ray.data.DataContext.get_current().enable_progress_bars = False
    small = encode_video(160, 96, 10, nframes=20)
    items = [_row(0, clip_320), _row(1, small), _row(2, b"", "error", "read", "boom"), _row(3, b"garbage" * 50),
             _row(4, clip_320), _row(5, clip_320)]
    ds = ray.data.from_items(items).map_batches(
        DecodeStage, fn_constructor_args=(CFG,), compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
        batch_size=2, batch_format="numpy").materialize()
    rows = sorted(ds.take_all(), key=lambda r: r["row_id"])
    assert [r["row_id"] for r in rows] == [f"r{i}" for i in range(6)]
    shapes = [tuple(r["frames"].shape) for r in rows]
    assert shapes == [(4, 280, 392, 3), (4, 252, 420, 3), (0, 0, 0, 3), (0, 0, 0, 3), (4, 280, 392, 3), (4, 280, 392, 3)]
    assert all(r["frames"].dtype == np.uint8 for r in rows)
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "ok", "ok"]
    assert rows[2]["error_stage"] == "read" and rows[2]["error"] == "boom"
    assert rows[3]["error_stage"] == "decode" and rows[3]["error"]
    assert rows[0]["error_stage"] is None
    assert np.array_equal(rows[0]["frames"], decode_video(clip_320, CFG).frames)
    # one schema for every block, also the batch (r4, r5) whose clips all have one shape
    assert ds.schema().base_schema.field("frames").type == _frames_type()
