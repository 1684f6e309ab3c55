"""The tiny offline Qwen2.5-VL checkpoint, the chat rendering and the shared sampling resolution."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.vs2.chat import (
    check_frames,
    digit_token_ids,
    expected_video_grid,
    nominal_video_metadata,
    render_chat,
    video_messages,
    video_token_count,
)
from pipeline.config import SamplingConfig
from pipeline.engines.sampling import resolve_sampling
from pipeline.dev.tiny_model import QWEN_SPECIAL_TOKENS, build_tiny_model

EXPECTED_RENDER = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Rate this video.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_loads_with_auto_classes_like_the_real_checkpoint(tiny_model_dir, processor):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert cfg.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    text = cfg.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 32  # one of the head sizes vLLM's CPU attention supports
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert cfg.vision_config.out_hidden_size == text.hidden_size
    assert text.vocab_size >= len(processor.tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2_000_000
    # Qwen's default per-frame pixel bounds on the video processor.
    assert processor.video_processor.size["shortest_edge"] == 128 * 28 * 28
    assert processor.video_processor.size["longest_edge"] == 768 * 28 * 28
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    tok = processor.tokenizer
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]


def test_special_tokens_in_qwen_order(processor):
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS)
    assert ids == list(range(ids[0], ids[0] + 14))
    assert len(tok) == ids[-1] + 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Special tokens are never split, and are skipped when decoding with skip_special_tokens.
    enc = tok.encode("<|vision_start|><|video_pad|><|vision_end|>", add_special_tokens=False)
    assert enc == tok.convert_tokens_to_ids(["<|vision_start|>", "<|video_pad|>", "<|vision_end|>"])
    assert tok.decode(enc + tok.encode("ok", add_special_tokens=False), skip_special_tokens=True) == "ok"


def test_digits_are_single_tokens_split_like_qwen(processor):
    tok = processor.tokenizer
    ids = digit_token_ids(tok)
    assert len(ids) == len(set(ids)) == 5
    assert [tok.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]
    # Qwen2's pre-tokenizer isolates every digit: "12345" is five tokens, ": 3" ends in the digit's id.
    assert tok.encode("12345", add_special_tokens=False) == ids
    assert tok.encode("visual quality: 3", add_special_tokens=False)[-1] == ids[2]
    # The VideoScore2 vocabulary is in the merges: the labels are a handful of tokens, not bytes.
    assert len(tok.encode("(2) text-to-video alignment: 4", add_special_tokens=False)) <= 12


def test_digit_token_ids_rejects_multi_token_digits():
    fake = SimpleNamespace(encode=lambda s, add_special_tokens=False: [1, 2] if s == "3" else [7])
    with pytest.raises(ValueError, match="'3'"):
        digit_token_ids(fake)


def test_chat_render_uses_the_checkpoint_template(tiny_model_dir, processor):
    from transformers import AutoTokenizer

    assert video_messages("hi") == [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    assert render_chat(processor, "Rate this video.") == EXPECTED_RENDER
    assert render_chat(AutoTokenizer.from_pretrained(tiny_model_dir), "Rate this video.") == EXPECTED_RENDER
    # User text goes in verbatim (leading newline, indentation, trailing spaces, en dashes).
    text = "\n    (1) visual quality \u2013 clarity; \n    "
    assert render_chat(processor, text).count(text) == 1
    with pytest.raises(ValueError, match="chat template"):
        render_chat(SimpleNamespace(chat_template=None), "x")


def test_build_is_deterministic_per_seed(tmp_path, tiny_model_dir):
    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (a / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


def test_processor_keeps_pre_sized_frames_and_nominal_fps(processor):
    rng = np.random.default_rng(0)
    for shape in [(4, 56, 84, 3), (10, 280, 504, 3)]:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        text = render_chat(processor, "Rate this video.")
        out = processor(text=[text], videos=[frames], video_metadata=[nominal_video_metadata(frames)],
                        fps=2.0, do_resize=False, do_sample_frames=False, return_tensors="pt")
        t, h, w = shape[:3]
        assert out["video_grid_thw"][0].tolist() == [t // 2, h // 14, w // 14] == expected_video_grid(frames)
        assert out["second_per_grid_ts"].tolist() == [1.0]  # as the official fps=2.0 call
        pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert int((out["input_ids"][0] == pad).sum()) == video_token_count(frames)
    # Without metadata transformers 5 would assume 24 fps (second_per_grid_ts 1/12): why we pass it.
    out = processor(text=[text], videos=[frames], do_resize=False, return_tensors="pt")
    assert out["second_per_grid_ts"].tolist() != [1.0]


def test_check_frames_rejects_what_the_engines_cannot_take():
    ok = np.zeros((4, 56, 84, 3), np.uint8)
    assert check_frames(ok) == (4, 56, 84)
    for bad, msg in [(ok[:3], "multiple of 2"), (ok[:, :50], "multiple of 28"), (ok.astype(np.float32), "uint8"),
                     (ok[0], r"\(T, H, W, 3\)")]:
        with pytest.raises(ValueError, match=msg):
            check_frames(bad)


def test_resolve_sampling_precedence(tiny_model_dir, tmp_path):
    s = resolve_sampling(tiny_model_dir, SamplingConfig())
    assert (s["temperature"], s["top_k"], s["top_p"], s["repetition_penalty"]) == (0.7, 50, 0.95, 1.05)
    assert s["source"] == {"top_k": "checkpoint", "top_p": "checkpoint", "repetition_penalty": "checkpoint"}
    assert not s["greedy"] and s["max_new_tokens"] == 1024
    s = resolve_sampling(tiny_model_dir, SamplingConfig(top_k=-1, top_p=0.5, repetition_penalty=1.0, greedy=True))
    assert (s["greedy"], s["temperature"], s["top_k"], s["top_p"], s["repetition_penalty"]) == (True, 0.0, 0, 0.5, 1.0)
    assert set(s["source"].values()) == {"config"}
    # A checkpoint without these fields gets transformers' defaults (what HF generate() would use).
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    s = resolve_sampling(bare, SamplingConfig())
    assert (s["top_k"], s["top_p"], s["repetition_penalty"]) == (50, 1.0, 1.0)
    assert set(s["source"].values()) == {"default"}
