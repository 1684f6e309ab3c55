"""The engine contract shared by the vLLM and transformers implementations.

An engine owns a loaded model and turns `EngineRequest`s (a rendered chat prompt plus frames that are
already sampled and resized the way qwen-vl-utils would) into `EngineOutput`s. It never resamples or
resizes frames. Per-request failures come back as `EngineOutput.error`, never as an exception, so one
bad sample cannot take a batch down; an exception from `generate` means the engine itself is broken.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import EngineConfig, SamplingConfig
    from pipeline.vs2.processor import Patches


@dataclasses.dataclass
class EngineRequest:
    request_id: str
    prompt: str
    """The full chat-formatted prompt text (system turn, video placeholder, user text, generation prompt)."""
    frames: np.ndarray | None
    """(T, H, W, 3) uint8, T even, H and W multiples of 28: the exact frames the model must see. None when the
    video comes as `patches` (only to an engine whose `takes_patches` is true)."""
    video_meta: dict[str, Any]
    """fps (source), total_num_frames (source), duration, frames_indices: where the frames came from."""
    seed: int
    patches: "Patches | None" = None
    """The same frames in the HF patch layout (`pipeline.vs2.processor.Patches`, made by the decode stage with
    `decode.patchify`), instead of `frames`."""

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the video, whichever way it is carried."""
        if self.patches is not None:
            return self.patches.frame_shape
        t, h, w = self.frames.shape[:3]
        return int(t), int(h), int(w)


@dataclasses.dataclass
class EngineOutput:
    request_id: str
    text: str = ""
    """Generated text decoded with skip_special_tokens=True (what the official parser sees)."""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    digit_logprobs: np.ndarray | None = None
    """(output_tokens, 5): log-probabilities of the tokens "1".."5" at every generated position under the
    temperature-scaled sampling distribution, each row up to an additive constant (the normed soft score
    renormalises over the five digits, so the constant cancels). -inf where a digit was masked or missing."""
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class Engine(Protocol):
    name: str
    tokenizer: Any
    """A transformers tokenizer with the checkpoint's vocabulary (used to locate score tokens)."""

    def render_prompt(self, user_text: str) -> str:
        """Chat-format one user turn holding the video then `user_text`, with the generation prompt."""

    def generate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        """Generate for every request; one output per request, same order."""

    def close(self) -> None: ...


def takes_patches(engine: Any) -> bool:
    """Whether `engine` takes requests whose video is `patches` (no frames); engines say so with a true
    `takes_patches` attribute, every other engine gets frames."""
    return bool(getattr(engine, "takes_patches", False))
