"""Hard-score parsing: the official strict regex first, the flagged tolerant fallback only when it fails."""

import re

import pytest

from pipeline.vs2.parse import STRICT_PATTERN, extract_rationale, parse_output, parse_strict

OFFICIAL = r"visual quality:\s*(\d+).*?text-to-video alignment:\s*(\d+).*?physical/common-sense consistency:\s*(\d+)"

TRAINED = ("\n<think>\nmulti-dimensional analysis: the clip is smooth.\n</think>\n\n"
           "(1) visual quality: 3\n(2) text-to-video alignment: 4\n(3) physical/common-sense consistency: 2\n")


def test_strict_pattern_is_the_official_one():
    assert STRICT_PATTERN == OFFICIAL


@pytest.mark.parametrize("text, expected, mode", [
    (TRAINED, (3, 4, 2), "strict"),
    # case-insensitive, DOTALL, first match wins (even inside the CoT)
    ("Visual Quality: 2 blah\n\nText-to-Video Alignment: 5 ... Physical/Common-Sense Consistency: 1\n"
     "(1) visual quality: 4\n(2) text-to-video alignment: 4\n(3) physical/common-sense consistency: 4", (2, 5, 1), "strict"),
    # out of range kept as parsed (no clamp), flagged below
    ("visual quality: 7; text-to-video alignment: 0, physical/common-sense consistency: 12", (7, 0, 12), "strict"),
    # section 4a failure shape: descriptors echoed from the short prompt
    ("<think>x</think>\n(1) visual quality \u2013 clarity, smoothness, artifacts: 3\n"
     "(2) text-to-video alignment \u2013 fidelity to the prompt: 4\n"
     "(3) physical/common-sense consistency \u2013 naturalness and physics plausibility: 2", (3, 4, 2), "tolerant"),
    # issue #7 shape: 3/5 notation and the 'Physical consistency' label
    ("Visual quality: 3/5; Text-to-video alignment: 4/5 ... Physical consistency: 2/5\n</think>\n</think>", (3, 4, 2), "tolerant"),
    # scores after </think> preferred over CoT mentions
    ("<think>visual quality - early: 1, t2v alignment: 1, physical consistency: 1</think>\n"
     "**Visual quality**: 4\n**Text-to-video alignment**: 5\n**Physical consistency**: 3", (4, 5, 3), "tolerant"),
    ("gibberish without any scores", (None, None, None), "failed"),
    ("visual quality: 3; text-to-video alignment: 4", (None, None, None), "failed"),
])
def test_parse_modes(text, expected, mode):
    p = parse_output(text)
    assert p.as_tuple() == expected
    assert p.parse_mode == mode
    if mode == "strict":
        m = re.search(OFFICIAL, text, re.DOTALL | re.IGNORECASE)
        assert tuple(int(g) for g in m.groups()) == expected  # identical to the official code


def test_out_of_range_flagged_not_clamped():
    p = parse_output("visual quality: 7; text-to-video alignment: 0, physical/common-sense consistency: 3")
    assert p.as_tuple() == (7, 0, 3) and p.out_of_range
    assert not parse_output(TRAINED).out_of_range


def test_rationale():
    assert extract_rationale(TRAINED) == "multi-dimensional analysis: the clip is smooth."
    assert extract_rationale("reasoning only</think>\n(1) visual quality: 3") == "reasoning only"
    assert extract_rationale("no think tags") is None
    assert parse_strict("nothing") is None
