"""The official "normed" soft score and the expectation, from per-position digit log-probabilities.

Official (``ll_based_soft_score_normed`` in ``vs2_inference.py``, paper eq. 2): at the generated token
that emitted the first digit after each label, take p(s) for the tokens "1".."5" from the
temperature-scaled (processed) distribution; s* = argmax (ties -> lower s); soft = s* x p(s*) / sum p.
Not an expectation: it is <= s*. None when the hard score is None or the position cannot be found.

We also return the expectation sum s p(s) / sum p (``*_expected``, a documented extra, as in the repo's
``vs2_float_weighted.py``).

Engines hand us ``digit_logprobs`` of shape (output_tokens, 5), each row up to an additive constant
(-inf = masked or missing = probability 0); renormalising over the five digits cancels the constant.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

LABELS = ("visual quality:", "text-to-video alignment:", "physical/common-sense consistency:")


def _digit_probs(digit_logprobs_row: Sequence[float]) -> np.ndarray | None:
    """p(1..5) from one position's digit log-probs (any common offset; -inf = 0), unnormalised."""
    lp = np.asarray(digit_logprobs_row, dtype=np.float64)
    if lp.shape != (5,) or not np.isfinite(lp).any():
        return None
    p = np.exp(lp - lp[np.isfinite(lp)].max())
    p[~np.isfinite(lp)] = 0.0
    return p


def normed_soft_score(digit_logprobs_row: Sequence[float]) -> float | None:
    """s* x p(s*) / sum_j p(j) over s in 1..5 from one position's digit log-probs (any common offset)."""
    p = _digit_probs(digit_logprobs_row)
    if p is None:
        return None
    best = int(np.argmax(p))  # first maximum -> lower score on ties, like list.index(max(...))
    return float((best + 1) * p[best] / p.sum())


def expected_score(digit_logprobs_row: Sequence[float]) -> float | None:
    p = _digit_probs(digit_logprobs_row)
    return None if p is None else float((np.arange(1, 6) * p).sum() / p.sum())


def locate_score_token(label: str, token_ids: Sequence[int], tokenizer: Any) -> int:
    """Index of the generated token holding the first digit after ``label`` (official
    ``find_score_token_index_by_prompt``): regex ``(?:\\(\\d+\\)\\s*|\\n\\s*)?<label>`` (IGNORECASE) over the
    text decoded with special tokens kept, first digit after the match, then the token i such that
    ``decode(ids[:i+1]) == text[:digit+1]``; -1 when not found.

    The official code tries every prefix (O(n^2) decodes); prefix decodes only grow, so we binary-search
    the first prefix long enough and check it for equality, which returns the same index.
    """
    ids = list(token_ids)
    if not ids:
        return -1
    text = tokenizer.decode(ids, skip_special_tokens=False)
    m = re.search(r"(?:\(\d+\)\s*|\n\s*)?" + re.escape(label), text, flags=re.IGNORECASE)
    if not m:
        return -1
    d = re.search(r"\d", text[m.end():])
    if not d:
        return -1
    target = text[: m.end() + d.start() + 1]
    lo, hi = 0, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=False)) >= len(target):
            hi = mid
        else:
            lo = mid + 1
    return lo if tokenizer.decode(ids[: lo + 1], skip_special_tokens=False) == target else -1


@dataclasses.dataclass
class SoftScores:
    soft: tuple[float | None, float | None, float | None]
    expected: tuple[float | None, float | None, float | None]
    positions: tuple[int, int, int]


def soft_scores(hard: Sequence[int | None], token_ids: Sequence[int], digit_logprobs: np.ndarray | None, tokenizer: Any) -> SoftScores:
    """Soft and expected scores for the three dimensions (None where the official rule gives None)."""
    soft: list[float | None] = []
    expd: list[float | None] = []
    pos: list[int] = []
    for label, h in zip(LABELS, hard):
        i = locate_score_token(label, token_ids, tokenizer)
        pos.append(i)
        if h is None or i < 0 or digit_logprobs is None or i >= len(digit_logprobs):
            soft.append(None)
            expd.append(None)
            continue
        soft.append(normed_soft_score(digit_logprobs[i]))
        expd.append(expected_score(digit_logprobs[i]))
    return SoftScores(tuple(soft), tuple(expd), tuple(pos))  # type: ignore[arg-type]
