"""Chat formatting exactly as the official VideoScore2 inference does it (docs/videoscore2.md section 1a).

One user turn, no system message: the video item first, then the text. The checkpoint's own chat
template renders it (with the stock Qwen2.5-VL template this inserts the default system turn
"You are a helpful assistant." and `<|vision_start|><|video_pad|><|vision_end|>` for the video).
"""

from __future__ import annotations

from typing import Any

SCORE_DIGITS = ("1", "2", "3", "4", "5")


def video_messages(user_text: str) -> list[dict[str, Any]]:
    """The official message list: a single user turn holding the video, then `user_text`."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]}]


def render_chat(processor_or_tokenizer: Any, user_text: str) -> str:
    """Render the official messages with the checkpoint's own chat template, plus the generation prompt.

    Accepts a processor or a tokenizer; either must carry the checkpoint's template (no fallback
    template is ever substituted: a checkpoint without one is an error).
    """
    obj = processor_or_tokenizer
    if getattr(obj, "chat_template", None) is None:
        tok = getattr(obj, "tokenizer", None)
        if tok is not None and getattr(tok, "chat_template", None) is not None:
            obj = tok
        else:
            name = type(processor_or_tokenizer).__name__
            raise ValueError(f"{name} has no chat template; the checkpoint must ship one")
    text = obj.apply_chat_template(video_messages(user_text), tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some versions return a list for a single conversation
        text = text[0]
    return text


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "1".."5" (the score digits), each required to be a single token."""
    ids: list[int] = []
    for d in SCORE_DIGITS:
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(
                f"score digit {d!r} encodes to {len(enc)} tokens {enc} with this tokenizer; soft scores need "
                "single-token digits (Qwen2's pre-tokenizer splits numbers into single digits)"
            )
        ids.append(int(enc[0]))
    return ids


# ---- How the frames are handed to the Qwen2.5-VL processor (both engines) -------------------------
#
# The frames are already sampled and resized the way qwen-vl-utils does it, so the processor must
# neither resample nor resize them. The official call passes `fps=2.0` and the processor (transformers
# 4.53) sets second_per_grid_ts = temporal_patch_size / fps = 1.0. transformers 5.x (and vLLM 0.32,
# which calls the same processor) instead derive it from the video metadata as
# temporal_patch_size / metadata.sampled_fps with sampled_fps = len(frames_indices) / total_num_frames
# * fps, and fall back to fps=24 (second_per_grid_ts 0.083) when no metadata is given. So both
# engines pass metadata that describes the frames as a clip sampled at exactly the nominal rate:
# `nominal_video_metadata`. The source metadata (real fps, frame indices) is informative only.

NOMINAL_FPS = 2.0  # the official `fps` passed to the processor (and the qwen-vl-utils sampling rate)
PATCH = 14
MERGE = 2
TEMPORAL_PATCH = 2
FRAME_FACTOR = PATCH * MERGE  # 28

VIDEO_PROCESSOR_KWARGS = {"do_resize": False, "do_sample_frames": False}
"""Processor kwargs that keep the frames exactly as given."""


def check_frames(frames: Any) -> tuple[int, int, int]:
    """Validate (T, H, W, 3) uint8 frames with T even and H, W multiples of 28; return (T, H, W)."""
    import numpy as np

    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"frames must be a (T, H, W, 3) numpy array, got {type(frames).__name__} {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0 or t % TEMPORAL_PATCH:
        raise ValueError(f"frame count must be a positive multiple of {TEMPORAL_PATCH}, got {t}")
    if h % FRAME_FACTOR or w % FRAME_FACTOR or h == 0 or w == 0:
        raise ValueError(f"frame size must be a multiple of {FRAME_FACTOR}, got {h}x{w}")
    return t, h, w


def expected_video_grid(frames: Any) -> list[int]:
    """video_grid_thw the processor must produce when it neither resamples nor resizes."""
    t, h, w = check_frames(frames)
    return [t // TEMPORAL_PATCH, h // PATCH, w // PATCH]


def video_token_count(frames: Any) -> int:
    """Number of <|video_pad|> tokens the video expands to in the prompt."""
    gt, gh, gw = expected_video_grid(frames)
    return gt * gh * gw // (MERGE * MERGE)


def nominal_video_metadata(frames: Any, fps: float = NOMINAL_FPS) -> dict[str, Any]:
    """Metadata presenting the frames as a clip sampled at exactly `fps` (so second_per_grid_ts = 2/fps)."""
    t, h, w = check_frames(frames)
    return {
        "total_num_frames": t,
        "fps": float(fps),
        "duration": t / float(fps),
        "frames_indices": list(range(t)),
        "height": h,
        "width": w,
        "video_backend": "pyav",
    }
