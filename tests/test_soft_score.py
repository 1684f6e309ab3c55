"""The official "normed" soft score on hand-computed vectors, and its HF == vLLM equivalence."""

import math

import numpy as np
import pytest
import torch

from pipeline.vs2.soft_score import expected_score, locate_score_token, normed_soft_score, soft_scores

LOG = np.log


@pytest.mark.parametrize("probs, normed, expected", [
    ([0.1, 0.2, 0.4, 0.2, 0.1], 3 * 0.4 / 1.0, 3.0),                 # argmax 3 at 40% -> 1.2, not an expectation
    ([0.05, 0.05, 0.1, 0.2, 0.6], 5 * 0.6 / 1.0, 4.25),
    ([0.3, 0.3, 0.2, 0.1, 0.1], 1 * 0.3 / 1.0, 2.4),                 # tie -> the lower score (list.index)
    ([0.0, 0.0, 0.58, 0.0, 0.0], 3.0, 3.0),                           # all mass on one digit
])
def test_hand_computed(probs, normed, expected):
    row = [LOG(p) if p > 0 else -math.inf for p in probs]
    assert normed_soft_score(row) == pytest.approx(normed, abs=1e-12)
    assert expected_score(row) == pytest.approx(expected, abs=1e-12)


def test_renormalised_over_digits_and_offset_free():
    # only 70% of the mass on digits (rest elsewhere in the vocab): 3 * 0.4 / 0.7
    row = [LOG(0.1), LOG(0.2), LOG(0.4), -math.inf, -math.inf]
    assert normed_soft_score(row) == pytest.approx(3 * 0.4 / 0.7, abs=1e-12)
    shifted = [x + 123.0 for x in row]
    assert normed_soft_score(shifted) == pytest.approx(normed_soft_score(row), abs=1e-12)
    assert normed_soft_score([-math.inf] * 5) is None


def test_vllm_raw_logprobs_over_temperature_equal_hf_processed_scores():
    """HF: log_softmax(logits / T) at the digit ids (processed scores). vLLM: raw log_softmax(logits),
    divided by T. Same normed score to 1e-9 (videoscore2.md 5d)."""
    g = torch.Generator().manual_seed(0)
    digit_ids = [11, 12, 13, 14, 15]
    for T in (0.7, 1.0, 0.3):
        logits = torch.randn(64, generator=g, dtype=torch.float64) * 3
        hf_row = torch.log_softmax(logits / T, -1)[digit_ids].numpy()
        vllm_row = (torch.log_softmax(logits, -1)[digit_ids] / T).numpy()
        # the official code, verbatim logic: p = exp(log_softmax(scores)[id]); best*pmax/sum
        probs = [float(np.exp(x)) for x in hf_row]
        best = probs.index(max(probs)) + 1
        official = best * max(probs) / sum(probs)
        assert normed_soft_score(hf_row) == pytest.approx(official, abs=1e-9)
        assert normed_soft_score(vllm_row) == pytest.approx(official, abs=1e-9)


class PieceTokenizer:
    """A tokenizer whose tokens are fixed strings (decode = concatenation), for position tests."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def official_locate(label, ids, tok):
    """The official O(n^2) search, transcribed (vs2_inference.find_score_token_index_by_prompt)."""
    import re

    gen_str = tok.decode(ids)
    m = re.search(r"(?:\(\d+\)\s*|\n\s*)?" + re.escape(label), gen_str, flags=re.IGNORECASE)
    if not m:
        return -1
    n = re.search(r"\d", gen_str[m.end():])
    if not n:
        return -1
    target = gen_str[: m.end() + n.start() + 1]
    for i in range(len(ids)):
        if tok.decode(ids[: i + 1]) == target:
            return i
    return -1


@pytest.mark.parametrize("text_pieces", [
    ["<think>", "ok", "</think>", "\n", "(1) ", "visual", " quality", ":", " ", "3", "\n(2) text-to-video alignment:", " ", "4",
     "\n(3) physical/common-sense", " consistency: ", "2", "\n"],
    ["Visual Quality:", "5", " and more", " text-to-video alignment:", " 1", "1", " physical/common-sense consistency:", "x", "9"],
    ["no", " labels", " here", " 3"],
])
def test_locate_matches_official(text_pieces):
    tok = PieceTokenizer(text_pieces)
    ids = list(range(len(text_pieces)))
    for label in ("visual quality:", "text-to-video alignment:", "physical/common-sense consistency:"):
        assert locate_score_token(label, ids, tok) == official_locate(label, ids, tok)


def test_soft_scores_gated_by_hard_score():
    pieces = ["visual quality: ", "3", " text-to-video alignment: ", "4", " physical/common-sense consistency: ", "2"]
    tok = PieceTokenizer(pieces)
    lp = np.full((6, 5), -math.inf)
    lp[1] = LOG([0.1, 0.1, 0.6, 0.1, 0.1])
    lp[3] = LOG([0.0 + 1e-300, 0.1, 0.1, 0.7, 0.1])
    lp[5] = LOG([0.2, 0.5, 0.1, 0.1, 0.1])
    s = soft_scores((3, 4, None), list(range(6)), lp, tok)
    assert s.positions == (1, 3, 5)
    assert s.soft[0] == pytest.approx(1.8) and s.soft[1] == pytest.approx(4 * 0.7)
    assert s.soft[2] is None and s.expected[2] is None  # hard None -> soft None (official gate)
