"""A tiny, randomly initialised Qwen2.5-VL checkpoint built offline, for tests and demos.

`build_tiny_model(out_dir)` writes a directory that `AutoProcessor.from_pretrained`,
`AutoModelForImageTextToText.from_pretrained` and `vllm.LLM(model=...)` load exactly as they load
TIGER-Lab/VideoScore2: the same architecture class (`Qwen2_5_VLForConditionalGeneration`), a Qwen2-style
byte-level BPE tokenizer with the 14 Qwen special tokens in Qwen order, the stock Qwen2.5-VL chat
template (default system turn, `<|vision_start|><|video_pad|><|vision_end|>` for a video item), a
`Qwen2_5_VLProcessor` (image + video processor at Qwen's default pixel bounds) and a
`generation_config.json`. It is about 0.8 M parameters (under 2 MB) and builds in a few seconds.

Constraints that make it load in vLLM's CPU backend (see docs/cpu-stack.md section 3):
  * text head_dim 32 (hidden 128 / 4 heads): the CPU attention backend supports only some head sizes;
  * `mrope_section` sums to head_dim / 2;
  * vision `out_hidden_size` equals the text hidden size.

The transformer blocks and the vision tower keep their random init; by default (`bigram=True`) the
token embedding and LM head are set so the network behaves like a bigram model of VideoScore2-shaped
replies (see `_bigram_weights`): sampled replies are long, format-flavoured gibberish ("<think> ...
</think> (1) visual quality: 3 ...") in which the score digits are genuinely uncertain, and greedy
top-1 margins are wide enough for transformers and vLLM (fp32) to agree token for token. The video
barely influences the reply.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# The official Qwen2-VL / Qwen2.5-VL chat template (chat_template.json of Qwen/Qwen2.5-VL-*-Instruct).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2 special tokens, in the order of their ids in the real vocabulary (151643 ... 151656).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2 pre-tokenizer split pattern (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX):
# digits are isolated one per piece (\p{N}), so "1".."5" are always single tokens.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

BPE_VOCAB_SIZE = 1024  # 256 byte symbols + 768 merges; the 14 specials follow at 1024..1037
CONFIG_VOCAB_SIZE = 1088  # embedding rows, padded to a multiple of 64 like Qwen's 152064

# Sampling defaults written to generation_config.json. The real VideoScore2 file is unknown
# (docs/videoscore2.md section 3); these are deliberately non-trivial so tests exercise the
# "None = take it from the checkpoint" resolution while leaving sampling genuinely random.
DEFAULT_GENERATION = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.05}

_WORDS = (
    "the a an of to and in on with for is are was be this that it video frame frames motion camera scene "
    "object objects person people dog cat car sky water tree light shadow color colors texture detail details "
    "smooth smoothness clarity clear blurry blur sharp artifacts artifact flicker flickering distortion noise "
    "consistent steady inconsistent natural naturalness physics plausible plausibility realistic unrealistic "
    "prompt fidelity matched aligned clean caption real world score scores rating overall "
    "good bad poor fair excellent average high low slightly very mostly some minor major severe "
    "analysis multi dimensional dimension evaluate evaluation expert generated AI model output format "
    "however but although while because therefore overall first second third finally moves walks runs flies "
    "appears looks seems shows showing background foreground subject face hands body movement speed"
).split()

_SYLLABLES = "ba be bi bo bu ka ke ki ko ku ra re ri ro ru ta te ti to tu na ne ni no nu ma me mi mo mu".split()

EOS_WEIGHT = 0.4  # bigram weight of "final score digit -> <|im_end|>"; sets the typical reply length

_LABELS = ("visual quality", "text-to-video alignment", "physical/common-sense consistency")


def _corpus(seed: int, n_lines: int = 6000) -> list[str]:
    """Synthetic training text: VideoScore2-style outputs and prompts, prose, digits, JSON, punctuation."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        words = [rng.choice(_WORDS) for _ in range(k)]
        s = " ".join(words)
        return s[0].upper() + s[1:] + rng.choice([".", ".", ",", ";", "!", "?"])

    lines: list[str] = []
    for i in range(n_lines):
        kind = i % 6
        if kind == 0:  # the trained output format
            think = " ".join(sentence(rng.randint(5, 14)) for _ in range(rng.randint(1, 3)))
            scores = [rng.randint(1, 5) for _ in range(3)]
            lines.append(
                f"<think>\nmulti-dimensional analysis: {think}\n</think>\n\n"
                + "".join(f"({j + 1}) {lab}: {s}\n" for j, (lab, s) in enumerate(zip(_LABELS, scores)))
            )
        elif kind == 1:  # the short public prompt's format lines
            lines.append(
                f"{_LABELS[0]}: {rng.randint(1, 5)}; \n{_LABELS[1]}: {rng.randint(1, 5)}, \n"
                f"{_LABELS[2]}: {rng.randint(1, 5)}\n"
            )
        elif kind == 2:  # prompt-like text with en dashes
            lines.append(
                "You are an expert for evaluating AI-generated videos from three dimensions:\n"
                f"(1) {_LABELS[0]} \u2013 clarity, smoothness, artifacts;\n"
                f"(2) {_LABELS[1]} \u2013 fidelity to the prompt;\n"
                f"(3) {_LABELS[2]} \u2013 naturalness and physics plausibility.\n"
                f"Video prompt: {sentence(rng.randint(4, 12))}\n"
            )
        elif kind == 3:  # numbers, ratios, scores with decimals
            lines.append(
                f"{rng.randint(0, 99999)} {rng.randint(1, 5)}/5 {rng.random() * 5:.4f} "
                f"{rng.randint(1, 5)}.{rng.randint(0, 9)} ({rng.randint(1, 3)}) {rng.randint(1900, 2030)}\n"
            )
        elif kind == 4:  # JSON
            lines.append(json.dumps({"score": rng.randint(1, 5), "reason": sentence(rng.randint(3, 8)),
                                     "label": rng.choice(_LABELS)}) + "\n")
        else:  # prose, plus made-up words so the merge table fills up
            coined = " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(4))
            lines.append(" ".join(sentence(rng.randint(4, 16)) for _ in range(rng.randint(1, 4))) + f" {coined}\n")
    return lines


def _train_tokenizer(seed: int):
    """Byte-level BPE with the Qwen2 pre-tokenizer, then wrapped as a transformers Qwen2Tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(seed), trainer=trainer)
    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    if len(vocab) != BPE_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer trained to {len(vocab)} entries, expected {BPE_VOCAB_SIZE}")

    # No eos/pad at construction time: Qwen2Tokenizer.__init__ would add them first, out of Qwen order.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=None, pad_token=None)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = 131072
    tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
    ids = tok.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS)
    if ids != list(range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + len(QWEN_SPECIAL_TOKENS))):
        raise RuntimeError(f"special token ids out of Qwen order: {ids}")
    for d in "12345":
        if len(tok.encode(d, add_special_tokens=False)) != 1:
            raise RuntimeError(f"digit {d!r} is not a single token in the tiny tokenizer")
    return tok


def _vs2_docs(seed: int, n_docs: int = 3000) -> list[str]:
    """VideoScore2-shaped assistant replies (think block, then the three numbered score lines)."""
    rng = random.Random(seed + 1)

    def sentence(k: int) -> str:
        s = " ".join(rng.choice(_WORDS) for _ in range(k))
        return s[0].upper() + s[1:] + rng.choice([".", ".", ".", ",", ";"])

    docs = []
    for _ in range(n_docs):
        scores = [rng.randint(1, 5) for _ in range(3)]
        think = []
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.3:
                j = rng.randrange(3)
                think.append(f"The {_LABELS[j]} is {rng.choice(['about', 'roughly', 'a'])} {scores[j]}/5.")
            else:
                think.append(sentence(rng.randint(5, 14)))
        docs.append(
            f"<think>\nmulti-dimensional analysis: {' '.join(think)}\n</think>\n\n"
            + "\n".join(f"({j + 1}) {lab}: {s}" for j, (lab, s) in enumerate(zip(_LABELS, scores)))
        )
    return docs


def _bigram_weights(tok, seed: int, hidden: int, vocab_rows: int, docs: list[str] | None = None,
                    eos_weight: float = EOS_WEIGHT):
    """Embedding and LM-head matrices that make the network (whose transformer blocks stay random and
    small) behave like a bigram model of VideoScore2-shaped replies.

    The centred log-bigram matrix L (next-token log-probs given the last token) is factorised by SVD
    to rank hidden-1: L ~ X @ Y.T. Every embedding row is padded with one "slack" coordinate so all
    rows have the same norm; the final RMSNorm then rescales them all by the same factor, and the
    head Y (divided by that factor) gives logits ~ L[last token]. Consequences: sampled replies are
    long, wander through the three "(k) label: N" lines with genuinely uncertain digits (so the hard
    parser and the soft score get exercised), greedy decoding has wide top-1 margins (engines agree
    token for token), and ids past the tokenizer (padding rows) or the vision/box specials are never
    emitted. The video barely influences the reply (the blocks are random).
    """
    import numpy as np

    n = len(tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    # The prompt always ends with "<|im_start|>assistant\n": its last token starts the reply.
    start = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-1]
    counts = np.zeros((n, n), dtype=np.float64)
    for ids in tok(docs if docs is not None else _vs2_docs(seed), add_special_tokens=False)["input_ids"]:
        seq = np.asarray([start, *ids], dtype=np.int64)
        np.add.at(counts, (seq[:-1], seq[1:]), 1.0)
        counts[start, seq[1]] += 20.0  # open with "<think>" far more often than any other "\n" successor
        counts[seq[-1], eos] += eos_weight  # the final digit sometimes ends the reply
    alpha = 0.01
    logp = np.log(counts + alpha) - np.log((counts + alpha).sum(axis=1, keepdims=True))
    # Jitter breaks exact ties ("(" -> "1"/"2"/"3" are equally frequent) so greedy top-1 margins are wide.
    logp += np.random.default_rng(seed).normal(0.0, 0.5, size=logp.shape)
    logp -= logp.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(logp)
    r = hidden - 1
    x = u[:, :r] * np.sqrt(s[:r])
    y = vt[:r].T * np.sqrt(s[:r])
    radius = float(np.linalg.norm(x, axis=1).max()) * 1.1
    slack = np.sqrt(radius**2 - (x**2).sum(axis=1))
    scale = np.sqrt(hidden) / radius  # what the final RMSNorm does to every (equal-norm) row
    emb = np.zeros((vocab_rows, hidden))
    emb[:n, :r] = x * scale
    emb[:n, r] = slack * scale
    head = np.zeros((vocab_rows, hidden))
    head[:n, :r] = y / scale
    # Padding rows and the specials that never occur in a reply: a logit of about -30 everywhere.
    never = list(range(n, vocab_rows)) + [
        tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")
    ]
    head[never, :] = 0.0
    head[never, r] = -30.0 / (float(slack.min()) * scale)
    return emb, head


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, generation: dict[str, Any] | None = None, bigram: bool = True,
    judge: bool = False,
) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (model, tokenizer, processor, chat template) to `out_dir`.

    `generation` overrides entries of generation_config.json (default: `DEFAULT_GENERATION`).
    `bigram=True` (default) sets the embedding and LM head from a bigram model of VideoScore2-shaped
    replies (see `_bigram_weights`); `bigram=False` leaves every weight at its random init (replies are
    byte soup, and greedy top-1 margins can be as small as 1e-5, too small for engine comparisons).
    `judge=True` then trains the text side into the format-trained tiny judge (pipeline/dev/tiny_judge.py:
    strict-parsable VideoScore2-format replies whose scores mean nothing) and marks its config.json.
    Returns the directory path.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(seed)
    sid = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    text_hidden = 128
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": CONFIG_VOCAB_SIZE,
            "hidden_size": text_hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,  # head_dim 32
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": sid["<|endoftext|>"],
            "eos_token_id": sid["<|im_end|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,  # head_dim 32
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": text_hidden,
            "hidden_act": "silu",
        },
        image_token_id=sid["<|image_pad|>"],
        video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"],
        vision_end_token_id=sid["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if bigram or judge:
        docs = None
        if judge:  # start the judge from a bigram model of its own reply format
            from pipeline.dev.tiny_judge import judge_docs

            docs = judge_docs(seed)
        emb, head = _bigram_weights(tok, seed, text_hidden, CONFIG_VOCAB_SIZE, docs=docs,
                                    eos_weight=1.0 if judge else EOS_WEIGHT)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(torch.from_numpy(emb))
            model.get_output_embeddings().weight.copy_(torch.from_numpy(head))
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),  # Qwen defaults: 56*56 .. 28*28*1280 pixels
        tokenizer=tok,
        # Qwen's video defaults: 128*28*28 .. 768*28*28 pixels per frame. Callers feed frames that are
        # already sized within these bounds and pass do_resize=False.
        video_processor=Qwen2VLVideoProcessor(
            size={"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28},
            cap_pixels_per_frame=False,
        ),
        chat_template=QWEN25_VL_CHAT_TEMPLATE,
    )
    if judge:
        from pipeline.dev.tiny_judge import JUDGE_MARKER, JUDGE_NOTE, train_judge

        stats = train_judge(model, processor, seed=seed)
        stats.pop("seconds")  # config.json stays byte-identical across builds
        setattr(model.config, JUDGE_MARKER, {"note": JUDGE_NOTE, "seed": seed, **stats})
    # Weights are saved in bf16 (as the real checkpoint); loaders cast to the requested dtype.
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16

    gen_kwargs = dict(DEFAULT_GENERATION)
    gen_kwargs.update(generation or {})
    model.generation_config = GenerationConfig(
        bos_token_id=sid["<|endoftext|>"],
        eos_token_id=[sid["<|im_end|>"], sid["<|endoftext|>"]],
        pad_token_id=sid["<|endoftext|>"],
        **gen_kwargs,
    )
    model.save_pretrained(out)

    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build the tiny random Qwen2.5-VL test checkpoint.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", action="store_true", help="the format-trained tiny judge (pipeline/dev/tiny_judge.py)")
    args = ap.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed, judge=args.judge))


if __name__ == "__main__":
    main()
