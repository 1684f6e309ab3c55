"""Both engines on the tiny checkpoint: real frames in, text / token ids / digit log-probs out.

The transformers tests are fast (the reference path). The vLLM tests share ONE module-scoped engine
(start-up is tens of seconds on 2 cores) and are marked slow.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.vs2.chat import video_token_count
from pipeline.config import EngineConfig, SamplingConfig
from pipeline.engines.base import EngineOutput, EngineRequest
from pipeline.engines.registry import make_engine

USER_TEXT = "Rate this video.\nVideo prompt: a cat walks on the grass"
SMALL = (4, 56, 84, 3)
LARGE = (10, 280, 504, 3)  # 720p resized by Qwen's smart_resize: 900 video tokens


def frames_of(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def request(engine, rid, shape, seed=0, frame_seed=0):
    return EngineRequest(request_id=rid, prompt=engine.render_prompt(USER_TEXT), frames=frames_of(shape, frame_seed),
                         video_meta={"fps": 24.0, "total_num_frames": 120, "duration": 5.0}, seed=seed)


def engine_cfg(model, kind, **kw):
    base = dict(kind=kind, model=str(model), dtype="float32", device="cpu", max_model_len=2048, max_num_seqs=8,
                enforce_eager=True)
    base.update(kw)
    return EngineConfig(**base)


def text_prompt_tokens(engine):
    """Prompt tokens besides the video: the rendered prompt minus its single <|video_pad|>."""
    return len(engine.tokenizer.encode(engine.render_prompt(USER_TEXT), add_special_tokens=False)) - 1


def assert_well_formed(out: EngineOutput, max_new_tokens: int):
    assert out.error is None, out.error
    assert 0 < out.output_tokens == len(out.token_ids) <= max_new_tokens
    assert out.digit_logprobs is not None and out.digit_logprobs.shape == (out.output_tokens, 5)
    assert out.digit_logprobs.dtype == np.float32
    # Sampling masks digits outside top-k/top-p (-inf), but some positions keep some digits.
    assert np.isfinite(out.digit_logprobs).any(axis=1).any()
    assert not np.isnan(out.digit_logprobs).any() and (out.digit_logprobs <= 1e-4).all()
    assert isinstance(out.text, str) and out.text


# ---------------------------------------------------------------------------------------------
# transformers (reference path)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_sampling(tiny_model_dir):
    return make_engine(engine_cfg(tiny_model_dir, "transformers"), SamplingConfig(max_new_tokens=48))


@pytest.fixture(scope="module")
def hf_greedy(tiny_model_dir):
    return make_engine(engine_cfg(tiny_model_dir, "transformers"), SamplingConfig(greedy=True, max_new_tokens=48))


def test_hf_engine_generates_on_real_frames(hf_sampling):
    eng = hf_sampling
    assert eng.name == "transformers" and type(eng).__name__ == "TransformersEngine"
    reqs = [request(eng, "small", SMALL), request(eng, "large", LARGE)]
    outs = eng.generate(reqs)
    assert [o.request_id for o in outs] == ["small", "large"]
    for req, out in zip(reqs, outs):
        assert_well_formed(out, 48)
        assert out.prompt_tokens == text_prompt_tokens(eng) + video_token_count(req.frames)
        assert out.text == eng.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        # Where the sampled token is a digit, its own (processed) log-prob is finite: it was sampled.
        for pos, tid in enumerate(out.token_ids):
            if tid in eng.digit_ids:
                assert np.isfinite(out.digit_logprobs[pos, eng.digit_ids.index(tid)])


def test_hf_processor_sees_the_frames_unchanged(hf_sampling):
    for shape in (SMALL, LARGE):
        inputs = hf_sampling.process(request(hf_sampling, "x", shape))
        t, h, w = shape[:3]
        assert inputs["video_grid_thw"].tolist() == [[t // 2, h // 14, w // 14]]  # no resize, no resampling
        assert inputs["pixel_values_videos"].shape[0] == (t // 2) * (h // 14) * (w // 14)
        assert inputs["second_per_grid_ts"].tolist() == [1.0]


def test_hf_seed_controls_sampling(hf_sampling):
    eng = hf_sampling
    assert eng.generation_config.do_sample and eng.generation_config.temperature == 0.7
    outs = eng.generate([request(eng, "a", SMALL, seed=7), request(eng, "b", SMALL, seed=7),
                         request(eng, "c", SMALL, seed=8)])
    assert outs[0].token_ids == outs[1].token_ids
    np.testing.assert_array_equal(outs[0].digit_logprobs, outs[1].digit_logprobs)
    assert outs[0].token_ids != outs[2].token_ids


def test_hf_greedy_ignores_seed(hf_greedy):
    eng = hf_greedy
    outs = eng.generate([request(eng, "a", SMALL, seed=1), request(eng, "b", SMALL, seed=2)])
    assert outs[0].token_ids == outs[1].token_ids and outs[0].output_tokens == 48


def test_hf_bad_request_is_an_error_row_not_an_exception(hf_sampling):
    eng = hf_sampling
    good = request(eng, "good", SMALL)
    odd = EngineRequest("odd", good.prompt, frames_of((3, 56, 84, 3)), {}, 0)
    floats = EngineRequest("floats", good.prompt, frames_of(SMALL).astype(np.float32), {}, 0)
    outs = eng.generate([odd, good, floats])
    assert [o.request_id for o in outs] == ["odd", "good", "floats"]
    assert outs[1].error is None and outs[1].output_tokens > 0
    for o in (outs[0], outs[2]):
        assert o.error and "\n" not in o.error and o.token_ids == [] and o.digit_logprobs is None


# ---------------------------------------------------------------------------------------------
# vLLM adapter pieces that need no running engine
# ---------------------------------------------------------------------------------------------

def _bare_vllm_engine(digit_ids=(16, 17, 18, 19, 20), temperature=0.7, mode="raw_logprobs"):
    from pipeline.engines.vllm_engine import VLLMEngine

    eng = object.__new__(VLLMEngine)
    eng.digit_ids = list(digit_ids)
    eng.sampling = {"temperature": temperature}
    eng.logprobs_mode = mode
    eng.detokenize = True  # the fakes below carry their text (the real engine decodes the ids itself)
    return eng


def test_vllm_digit_rows_from_logprob_dicts():
    lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731
    steps = [{16: lp(-1.4), 18: lp(-0.7), 99: lp(-0.1)}, {}, {20: lp(float("-inf"))}]
    raw = _bare_vllm_engine(temperature=0.7, mode="raw_logprobs")._digit_rows(steps, 3)
    np.testing.assert_allclose(raw[0], [-2.0, -np.inf, -1.0, -np.inf, -np.inf])  # raw / T, missing = -inf
    assert np.isneginf(raw[1]).all() and np.isneginf(raw[2]).all()
    processed = _bare_vllm_engine(temperature=0.7, mode="processed_logprobs")._digit_rows(steps, 3)
    np.testing.assert_allclose(processed[0], [-1.4, -np.inf, -0.7, -np.inf, -np.inf])  # already scaled
    greedy_raw = _bare_vllm_engine(temperature=0.0, mode="raw_logprobs")._digit_rows(steps, 2)
    np.testing.assert_allclose(greedy_raw[0, [0, 2]], [-1.4, -0.7])
    assert _bare_vllm_engine()._digit_rows(None, 2).shape == (2, 5)


def test_vllm_sync_batch_failure_falls_back_to_one_by_one(monkeypatch):
    """vllm.LLM raises for the whole call when one prompt is bad: only that request must error."""
    import threading

    eng = _bare_vllm_engine()
    eng.use_async, eng._lock, eng.max_model_len = False, threading.Lock(), 10**6
    calls = []

    def fake_generate(reqs):
        calls.append([r.request_id for r in reqs])
        if any(r.request_id == "bad" for r in reqs):
            raise ValueError("The decoder prompt is longer than the maximum model length\nsecond line")
        return [SimpleNamespace(prompt_token_ids=[1, 2, 3],
                                outputs=[SimpleNamespace(text=r.request_id, token_ids=[5, 6], logprobs=None)])
                for r in reqs]

    monkeypatch.setattr(eng, "_validate", lambda req: None)
    monkeypatch.setattr(eng, "_llm_generate", fake_generate)
    reqs = [EngineRequest(i, "p", np.zeros(SMALL, np.uint8), {}, 0) for i in ("a", "bad", "c")]
    outs = eng.generate(reqs)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert [(o.request_id, o.text, o.error is None) for o in outs] == [("a", "a", True), ("bad", "", False),
                                                                        ("c", "c", True)]
    assert outs[1].error.startswith("ValueError: The decoder prompt") and "\n" not in outs[1].error
    assert outs[0].prompt_tokens == 3 and outs[0].token_ids == [5, 6] and outs[0].digit_logprobs.shape == (2, 5)


# ---------------------------------------------------------------------------------------------
# vLLM on CPU: one engine for the module
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    pytest.importorskip("vllm")
    # batches_in_flight > 1 selects the AsyncLLM engine (generate() and agenerate()).
    eng = make_engine(engine_cfg(tiny_model_dir, "vllm", batches_in_flight=2),
                      SamplingConfig(greedy=True, max_new_tokens=48))
    yield eng
    eng.close()


@pytest.mark.slow
def test_vllm_greedy_equals_hf_greedy(vllm_engine, hf_greedy):
    eng = vllm_engine
    assert eng.name == "vllm" and eng.use_async
    assert eng.render_prompt(USER_TEXT) == hf_greedy.render_prompt(USER_TEXT)
    reqs = [request(eng, "small", SMALL), request(eng, "large", LARGE)]
    outs, refs = eng.generate(reqs), hf_greedy.generate(reqs)
    for req, out, ref in zip(reqs, outs, refs):
        assert_well_formed(out, 48)
        assert out.token_ids == ref.token_ids
        assert out.text.encode() == ref.text.encode()
        assert np.isfinite(out.digit_logprobs).all()  # greedy: nothing masked
        # Same prompt length as transformers, and exactly what an unresized, unresampled video expands to.
        assert out.prompt_tokens == ref.prompt_tokens == text_prompt_tokens(eng) + video_token_count(req.frames)
        # processed log-probs: same values as transformers' output_scores, same masked (-inf) entries.
        np.testing.assert_array_equal(np.isfinite(out.digit_logprobs), np.isfinite(ref.digit_logprobs))
        fin = np.isfinite(ref.digit_logprobs)
        np.testing.assert_allclose(out.digit_logprobs[fin], ref.digit_logprobs[fin], atol=2e-3)


@pytest.mark.slow
def test_vllm_seeded_sampling(vllm_engine, monkeypatch):
    eng = vllm_engine
    monkeypatch.setitem(eng.sampling, "temperature", 0.7)  # this engine was built greedy
    monkeypatch.setitem(eng.sampling, "greedy", False)
    outs = eng.generate([request(eng, "a", SMALL, seed=7), request(eng, "b", SMALL, seed=7),
                         request(eng, "c", SMALL, seed=8)])
    for o in outs:
        assert_well_formed(o, 48)
    assert outs[0].token_ids == outs[1].token_ids
    assert outs[0].token_ids != outs[2].token_ids
    for out in outs:
        for pos, tid in enumerate(out.token_ids):
            if tid in eng.digit_ids:
                assert np.isfinite(out.digit_logprobs[pos, eng.digit_ids.index(tid)])


@pytest.mark.slow
def test_vllm_bad_requests_are_error_rows(vllm_engine, monkeypatch):
    eng = vllm_engine
    good = request(eng, "good", SMALL)
    too_long = EngineRequest("too_long", good.prompt, frames_of((40, 280, 504, 3)), {}, 0)  # 3600 video tokens
    odd = EngineRequest("odd", good.prompt, frames_of((3, 56, 84, 3)), {}, 0)
    outs = eng.generate([too_long, good, odd])
    assert [o.request_id for o in outs] == ["too_long", "good", "odd"]
    assert outs[1].error is None and outs[1].output_tokens == 48
    assert "max_model_len" in outs[0].error and "multiple of 2" in outs[2].error
    # Without our pre-check vLLM itself rejects the long prompt: still one error row, not an exception.
    monkeypatch.setattr(eng, "_validate", lambda req: None)
    outs = eng.generate([too_long, good])
    assert outs[0].error and "\n" not in outs[0].error and outs[0].token_ids == []
    assert outs[1].error is None and outs[1].output_tokens == 48


@pytest.mark.slow
def test_vllm_agenerate_overlaps_batches(vllm_engine):
    eng = vllm_engine
    batch_a = [request(eng, f"a{i}", SMALL, frame_seed=i) for i in range(3)]
    batch_b = [request(eng, f"b{i}", LARGE, frame_seed=i) for i in range(2)]
    sequential = eng.generate(batch_a) + eng.generate(batch_b)

    async def both():
        return await asyncio.gather(eng.agenerate(batch_a), eng.agenerate(batch_b))

    got_a, got_b = asyncio.run(both())
    assert [o.request_id for o in got_a + got_b] == ["a0", "a1", "a2", "b0", "b1"]
    for out, ref in zip(got_a + got_b, sequential):
        assert out.error is None and out.token_ids == ref.token_ids


@pytest.mark.slow
def test_vllm_generate_is_thread_safe(vllm_engine):
    from concurrent.futures import ThreadPoolExecutor

    eng = vllm_engine
    batches = [[request(eng, f"{k}{i}", SMALL, frame_seed=10 * k + i) for i in range(2)] for k in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(eng.generate, batches))
    for batch, outs in zip(batches, results):
        assert [o.request_id for o in outs] == [r.request_id for r in batch]
        assert all(o.error is None and o.output_tokens == 48 for o in outs)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("VSCORE_TEST_VLLM_SYNC"),
                    reason="starts a second vLLM engine (sync vllm.LLM path); set VSCORE_TEST_VLLM_SYNC=1")
def test_vllm_sync_llm_path_equals_hf(tiny_model_dir, hf_greedy):
    pytest.importorskip("vllm")
    eng = make_engine(engine_cfg(tiny_model_dir, "vllm", batches_in_flight=1),
                      SamplingConfig(greedy=True, max_new_tokens=48))
    try:
        assert not eng.use_async and eng.llm is not None
        reqs = [request(eng, "small", SMALL), request(eng, "large", LARGE)]
        too_long = EngineRequest("too_long", reqs[0].prompt, frames_of((40, 280, 504, 3)), {}, 0)
        outs, refs = eng.generate(reqs + [too_long]), hf_greedy.generate(reqs)
        for out, ref in zip(outs, refs):
            assert out.token_ids == ref.token_ids and out.prompt_tokens == ref.prompt_tokens
        assert "max_model_len" in outs[2].error
        outs = asyncio.run(eng.agenerate(reqs))  # sync engine: runs in a worker thread
        assert [o.token_ids for o in outs] == [r.token_ids for r in refs]
    finally:
        eng.close()


def test_vllm_digit_rows_from_flat_logprobs_equal_the_dict_path():
    """flat_logprobs=True (issue 15): the vectorised reader of vLLM's FlatLogprobs gives the rows the per-position
    dict path gives, including a sampled token that is also a requested digit, NaN and -inf entries."""
    from itertools import cycle

    from vllm.logprobs import FlatLogprobs, append_logprobs_for_next_position

    digits = [16, 17, 18, 19, 20]
    rng = np.random.default_rng(0)
    flat, lists = FlatLogprobs(), []
    sampled = cycle([99, 17, 5, 20, 16])
    for pos in range(37):
        tok = next(sampled)
        vals = rng.normal(-3, 1, size=6).tolist()
        if pos == 3:
            vals[2] = float("nan")
        if pos == 5:
            vals[4] = float("-inf")
        ids = [tok] + digits
        if tok in digits:  # the sampled token's value equals its value as a requested digit
            vals[1 + digits.index(tok)] = vals[0]
        for target in (flat, lists):
            append_logprobs_for_next_position(target, ids, vals, [None] * 6, 1, 5)
    for mode, temp in (("processed_logprobs", 0.7), ("raw_logprobs", 0.7), ("raw_logprobs", 0.0)):
        eng = _bare_vllm_engine(temperature=temp, mode=mode)
        np.testing.assert_array_equal(eng._digit_rows(flat, 37), eng._digit_rows(lists, 37))
        np.testing.assert_array_equal(eng._digit_rows(flat, 20), eng._digit_rows(lists, 20))  # fewer ids than positions
        np.testing.assert_array_equal(eng._digit_rows(flat, 40)[37:], np.full((3, 5), -np.inf, np.float32))


def test_vllm_prompt_names_the_video_and_sampling_skips_detokenization():
    """Issue 15: each request carries a caller-supplied video id (vLLM never hashes the frames; a resample of the
    same video shares it), and vLLM does not detokenize (the text is decoded once from the ids, as transformers
    does)."""
    from pipeline.engines.base import EngineRequest
    from pipeline.engines.vllm_engine import VLLMEngine, engine_args, video_uuid

    frames = np.zeros((4, 56, 84, 3), np.uint8)
    req = EngineRequest(request_id="abc", prompt="p", frames=frames, video_meta={}, seed=1)
    again = EngineRequest(request_id="abc#2", prompt="p", frames=frames, video_meta={}, seed=2)
    eng = object.__new__(VLLMEngine)
    eng.video_fps, eng.mm_processor_kwargs, eng.mm_uuids = 2.0, {"do_resize": False}, True
    p = eng.vllm_prompt(req)
    assert p["multi_modal_uuids"] == {"video": ["vscore:abc:4x56x84"]} == {"video": [video_uuid(again)]}
    eng.mm_uuids = False
    assert "multi_modal_uuids" not in eng.vllm_prompt(req)

    eng.sampling = {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "max_new_tokens": 8,
                    "logprobs": 5}
    eng.digit_ids, eng._sp_fields = [16, 17, 18, 19, 20], VLLMEngine._sampling_param_fields()
    eng.detokenize, eng.flat_logprobs = False, True
    sp = eng.sampling_params(3)
    assert sp.detokenize is False and sp.flat_logprobs is True
    eng.detokenize, eng.flat_logprobs = True, False
    sp = eng.sampling_params(3)
    assert sp.detokenize is True and sp.flat_logprobs is False

    from pipeline.config import EngineConfig

    args = engine_args(EngineConfig(kind="vllm", model="m"))
    assert args["mm_processor_cache_gb"] == 0 and args["disable_log_stats"] is True
    assert engine_args(EngineConfig(kind="vllm", model="m", engine_kwargs={"mm_processor_cache_gb": 4}))["mm_processor_cache_gb"] == 4
