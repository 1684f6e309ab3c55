"""The format-trained tiny judge (pipeline/dev/tiny_judge.py): deterministic build, the same checkpoint
layout as the tiny model, and sampled replies (the pipeline's default sampling) that the strict official
regex parses, with real digit probabilities whose soft scores match the official formula."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.config import EngineConfig, SamplingConfig
from pipeline.dev.tiny_judge import JUDGE_MARKER, JUDGE_NOTE, is_test_judge
from pipeline.dev.tiny_model import build_tiny_model
from pipeline.engines.base import EngineRequest
from pipeline.engines.registry import make_engine
from pipeline.vs2 import templates
from pipeline.vs2.parse import parse_output
from pipeline.vs2.soft_score import soft_scores
from tests.judge_checks import DIMS, digit_probs, official_soft_scores


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # builds the judge a second time (15-25 s of training)
def test_judge_build_is_deterministic_and_shaped_like_the_tiny_model(tiny_judge_dir, tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "judge", seed=0, judge=True)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert _sha(again / name) == _sha(tiny_judge_dir / name), name
    judge_cfg = json.loads((tiny_judge_dir / "config.json").read_text())
    plain_cfg = json.loads((tiny_model_dir / "config.json").read_text())
    marker = judge_cfg.pop(JUDGE_MARKER)
    assert marker["note"] == JUDGE_NOTE and marker["loss_last"] < marker["loss_first"]
    assert judge_cfg == plain_cfg  # same architecture and sizes: loads wherever the tiny model loads
    for name in ("tokenizer.json", "generation_config.json", "processor_config.json", "chat_template.jinja"):
        assert _sha(tiny_judge_dir / name) == _sha(tiny_model_dir / name), name
    assert is_test_judge(tiny_judge_dir) and not is_test_judge(tiny_model_dir)
    assert _sha(tiny_judge_dir / "model.safetensors") != _sha(tiny_model_dir / "model.safetensors")


def test_judge_sampled_replies_parse_strict_with_real_digit_probabilities(tiny_judge_dir):
    # The checkpoint's own sampling (temperature 0.7, top-k 50, top-p 0.95, repetition penalty 1.05).
    eng = make_engine(EngineConfig(kind="transformers", model=str(tiny_judge_dir), dtype="float32", device="cpu",
                                   max_model_len=4096), SamplingConfig(max_new_tokens=96))
    assert eng.generation_config.do_sample and eng.generation_config.temperature == 0.7
    rng = np.random.default_rng(0)
    shapes = [(4, 56, 84), (10, 280, 504), (2, 112, 112), (6, 392, 700)] * 2
    names = sorted(templates.TEMPLATES)
    reqs = [EngineRequest(f"r{i}", eng.render_prompt(templates.render(names[i % 4], f"a cat walks #{i}")),
                          rng.integers(0, 256, s + (3,), dtype=np.uint8), {}, seed=1000 + i)
            for i, s in enumerate(shapes)]
    outs = eng.generate(reqs)
    strict, digits, checked = 0, set(), 0
    for out in outs:
        assert out.error is None, out.error
        parsed = parse_output(out.text)
        if parsed.parse_mode != "strict":
            continue
        strict += 1
        digits.update(parsed.as_tuple())
        ours = soft_scores(parsed.as_tuple(), out.token_ids, out.digit_logprobs, eng.tokenizer).soft
        official = official_soft_scores(out.token_ids, out.digit_logprobs, eng.tokenizer)
        for d, a, b in zip(DIMS, ours, official):
            assert a is not None and b is not None and abs(a - b) < 1e-9, (d, a, b)
            checked += 1
        for p in digit_probs(out.token_ids, out.digit_logprobs, eng.tokenizer):
            assert p.max() < 0.99 and (p > 0.02).sum() >= 2, p  # real probabilities, not one-hot
    assert strict >= len(reqs) - 1, [o.text for o in outs]
    assert checked >= 3 * (len(reqs) - 1)
    assert len(digits) >= 3 and digits <= {1, 2, 3, 4, 5}, digits
