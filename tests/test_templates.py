"""Templates are byte-exact copies of the official strings (../shared/docs/videoscore2.md section 1)."""

import hashlib
import json

import pytest

from pipeline.vs2 import templates

# JSON-escaped runtime strings as given in videoscore2.md 1b (an independent transcription of
# vs2_inference.py @e6abe26b and of the model card variant).
PUBLIC_JSON = '"\\n    You are an expert for evaluating AI-generated videos from three dimensions:\\n    (1) visual quality \\u2013 clarity, smoothness, artifacts;\\n    (2) text-to-video alignment \\u2013 fidelity to the prompt;\\n    (3) physical/common-sense consistency \\u2013 naturalness and physics plausibility.\\n\\n    Video prompt: $t2v_prompt\\n\\n    Please output in this format:\\n    visual quality: <v_score>; \\n    text-to-video alignment: <t_score>, \\n    physical/common-sense consistency: <p_score>\\n    "'
CARD_JSON = '"\\nYou are an expert for evaluating AI-generated videos from three dimensions:\\n(1) visual quality \\u2013 clarity, smoothness, artifacts;\\n(2) text-to-video alignment \\u2013 fidelity to the prompt;\\n(3) physical/common-sense consistency \\u2013 naturalness and physics plausibility.\\n\\nVideo prompt: $t2v_prompt\\n\\nPlease output in this format:\\nvisual quality: <v_score>;\\ntext-to-video alignment: <t_score>,\\nphysical/common-sense consistency: <p_score>\\n"'

# sha256 of the raw (unsubstituted) templates, checked against the upstream files when written;
# any edit, even of whitespace, must fail here.
SHA256 = {
    "vs2-eval": "a8bc063168706ad91c0502895ef0aec38df0a7af551ed6d59009b4d7875b7582",
    "vs2-public": "63a228e02ca61abc55d941234ee92285c18e517fa35e667e9ba2336dc193298c",
    "vs2-card": "372bdeafd688b442490c77549b8d848ff5223f85092d56ebf4609c781be13725",
    "vs2-train": "5ef61763b783f93d595fbadf424fac650160ff329dfef4ea28fe149bed8e5324",
}


def test_public_and_card_match_documented_strings():
    assert templates.VS2_PUBLIC == json.loads(PUBLIC_JSON)
    assert len(templates.VS2_PUBLIC) == 470  # "470 characters before substitution"
    assert templates.VS2_PUBLIC.count("\u2013") == 3
    assert templates.VS2_CARD == json.loads(CARD_JSON)


@pytest.mark.parametrize("name", sorted(SHA256))
def test_template_bytes_pinned(name):
    assert hashlib.sha256(templates.TEMPLATES[name].encode()).hexdigest() == SHA256[name]


def test_eval_template_features():
    t = templates.VS2_EVAL
    assert t.startswith("\nYou are an expert for evaluating and thinking about the quality of AI videos")
    assert "please evaluate the video and give the quality score. \n" in t  # @ec3a2c84 wording
    assert "The quality score must be integars in the range of 1 - 5.\n" in t  # typo as upstream
    assert "visual quality: <v_score>; \ntext-to-video alignment: <t_score>,\n" in t  # trailing space after ';' only
    assert "keywords written by the annotators" not in t  # dropped at @ec3a2c84
    assert t.endswith("DO NOT include any other things behind or after your output.\n")


def test_train_template_features():
    t = templates.VS2_TRAIN
    assert "The keywords written by the annotators are also mostly derived from the above factors.\n" in t
    assert t.endswith("thinking process should be of appropriate length and expression.\n\n")


def test_default_is_eval():
    assert templates.DEFAULT_TEMPLATE == "vs2-eval"


def test_render_substitutes_verbatim():
    odd = "  A cat $5 {x} \\n — 'quoted'  "
    out = templates.render("vs2-public", odd)
    assert f"Video prompt: {odd}\n" in out  # no strip, no escaping
    out = templates.render("vs2-eval", "a dog")
    assert "its text prompt: \na dog.\n\n" in out
    with pytest.raises(ValueError):
        templates.render("nope", "x")
