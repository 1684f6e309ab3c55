"""pipeline/vs2/processor.py: `pixel_values_videos` and `video_grid_thw` byte-identical to transformers'
Qwen2VLVideoProcessor (the checkpoint's settings, as both engines call it) on real clips decoded by our decode
stage. The shared clips must be present (../shared/data/videos): the test fails, not skips, without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DecodeConfig
from pipeline.video.decode import decode_video
from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata
from pipeline.vs2.processor import VideoProcessorSettings, video_patches
from tests.fixtures_model import tiny_model_dir  # noqa: F401

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def _clips() -> list[Path]:
    clips = sorted(p for p in VIDEOS.rglob("*") if p.suffix.lower() in (".mp4", ".webm", ".mkv", ".mov"))
    assert clips, f"the shared real clips are missing: {VIDEOS}"
    return clips


@pytest.fixture(scope="module")
def video_processor(tiny_model_dir):  # noqa: F811 - the fixture
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir).video_processor


def test_patches_byte_identical_to_the_hf_processor_on_real_clips(video_processor):
    import torch

    s = VideoProcessorSettings.from_processor(video_processor)
    clips = _clips()
    checked = 0
    for clip in clips[:6]:
        frames = decode_video(clip.read_bytes(), DecodeConfig()).frames
        hf = video_processor(videos=[frames], video_metadata=[nominal_video_metadata(frames)], return_tensors="pt",
                             **VIDEO_PROCESSOR_KWARGS)
        pv, grid = video_patches(frames, s)
        ref = hf["pixel_values_videos"]
        assert ref.dtype == torch.float32 and pv.dtype == np.float32 and pv.shape == tuple(ref.shape), clip.name
        assert pv.tobytes() == ref.numpy().tobytes(), f"{clip.name}: pixel_values_videos differ"
        assert grid.tolist() == hf["video_grid_thw"].tolist(), clip.name
        checked += 1
    assert checked >= 1


def test_settings_come_from_the_checkpoint(video_processor):
    s = VideoProcessorSettings.from_processor(video_processor)
    assert (s.patch_size, s.temporal_patch_size, s.merge_size) == (14, 2, 2)
    assert s.rescale_factor == pytest.approx(1 / 255)
    assert s.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
