"""One resolution of the decoding parameters, shared by both engines so they sample the same distribution.

The official VideoScore2 call is `generate(do_sample=True, temperature=0.7, ...)`: every parameter it
does not pass (top_k, top_p, repetition_penalty) comes from the checkpoint's generation_config.json,
and failing that from transformers' defaults (top_k=50, top_p=1.0, repetition_penalty=1.0). vLLM
only reads some of those fields, with different defaults (top_k off), so both engines get explicit
values from `resolve_sampling` instead (docs/videoscore2.md section 3).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import SamplingConfig

log = logging.getLogger(__name__)

# transformers' GenerationConfig defaults (generation/configuration_utils.py, _get_default_generation_params).
HF_DEFAULT_TOP_K = 50
HF_DEFAULT_TOP_P = 1.0
HF_DEFAULT_REPETITION_PENALTY = 1.0


def load_generation_config(model_path_or_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's generation_config.json as a dict ({} when the checkpoint has none).

    A local directory is read directly; a hub id goes through huggingface_hub's cache (respecting
    HF_HUB_OFFLINE), so it works wherever `from_pretrained` would.
    """
    p = Path(model_path_or_id)
    if p.is_dir():
        f = p / "generation_config.json"
        return json.loads(f.read_text()) if f.is_file() else {}
    try:
        from huggingface_hub import hf_hub_download

        f = hf_hub_download(str(model_path_or_id), "generation_config.json", revision=revision)
    except Exception as e:  # missing file or unreachable hub: transformers' defaults apply, as in generate()
        log.warning("no generation_config.json for %s (%s); using transformers defaults",
                    model_path_or_id, type(e).__name__)
        return {}
    return json.loads(Path(f).read_text())


def resolve_sampling(
    model_path_or_id: str | os.PathLike,
    sampling_cfg: "SamplingConfig",
    revision: str | None = None,
    generation_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explicit decoding parameters for both engines.

    Returns {"greedy", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed",
    "logprobs", "source"}:
      * temperature: the config's (the official 0.7); 0.0 when greedy.
      * top_k / top_p / repetition_penalty: the config's value when set, else the checkpoint's
        generation_config.json, else transformers' default (50 / 1.0 / 1.0). top_k 0 means off (a
        config value of -1 is normalised to 0: transformers and vLLM both read 0 as off).
      * source: where each of the three came from ("config", "checkpoint" or "default").
    `generation_config` may be passed to skip reading the checkpoint.
    """
    gen = load_generation_config(model_path_or_id, revision) if generation_config is None else generation_config
    source: dict[str, str] = {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(sampling_cfg, name)
        if value is not None:
            source[name] = "config"
            return value
        if gen.get(name) is not None:
            source[name] = "checkpoint"
            return gen[name]
        source[name] = "default"
        return default

    top_k = int(pick("top_k", HF_DEFAULT_TOP_K))
    top_p = float(pick("top_p", HF_DEFAULT_TOP_P))
    repetition_penalty = float(pick("repetition_penalty", HF_DEFAULT_REPETITION_PENALTY))
    if top_k < 0:
        top_k = 0
    greedy = bool(sampling_cfg.greedy) or float(sampling_cfg.temperature) == 0.0
    return {
        "greedy": greedy,
        "temperature": 0.0 if greedy else float(sampling_cfg.temperature),
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": int(sampling_cfg.max_new_tokens),
        "seed": int(sampling_cfg.seed),
        "logprobs": int(sampling_cfg.logprobs),
        "source": source,
    }
