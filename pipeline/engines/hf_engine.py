"""The transformers engine: the reference path, one video per `generate` call like the official script.

`AutoProcessor` + `AutoModelForImageTextToText` (which resolves to Qwen2_5_VLForConditionalGeneration
for VideoScore2), the checkpoint's own chat template, `output_scores=True` so the soft score sees the
*processed* per-step scores (after repetition penalty, temperature, top-k and top-p), exactly as in
`vs2_inference.py`. Slow but faithful; the vLLM engine is the production path.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.vs2.chat import (
    VIDEO_PROCESSOR_KWARGS,
    digit_token_ids,
    expected_video_grid,
    nominal_video_metadata,
    render_chat,
)
from pipeline.engines.base import EngineOutput, EngineRequest
from pipeline.engines.sampling import resolve_sampling
from pipeline.schema import one_line

if TYPE_CHECKING:
    from pipeline.config import EngineConfig, SamplingConfig

log = logging.getLogger(__name__)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


class TransformersEngine:
    """`base.Engine` on transformers. Requests are run one at a time, each with its own seed."""

    name = "transformers"

    def __init__(self, engine_cfg: "EngineConfig", sampling_cfg: "SamplingConfig", video_fps: float = 2.0) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

        self.engine_cfg = engine_cfg
        self.video_fps = float(video_fps)
        device = engine_cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # engine_kwargs belong to whichever engine the config names; only ours go to from_pretrained.
        extra = dict(engine_cfg.engine_kwargs) if engine_cfg.kind == "transformers" else {}

        t0 = time.perf_counter()
        self.processor = AutoProcessor.from_pretrained(engine_cfg.model, revision=engine_cfg.revision)
        self.tokenizer = self.processor.tokenizer
        self.model = AutoModelForImageTextToText.from_pretrained(
            engine_cfg.model, revision=engine_cfg.revision, dtype=_torch_dtype(engine_cfg.dtype), **extra
        ).to(self.device)
        self.model.eval()
        self.load_seconds = time.perf_counter() - t0

        self.sampling = resolve_sampling(engine_cfg.model, sampling_cfg, revision=engine_cfg.revision)
        self.digit_ids = digit_token_ids(self.tokenizer)
        s = self.sampling
        gen = GenerationConfig.from_dict(self.model.generation_config.to_dict())
        gen.max_new_tokens = s["max_new_tokens"]
        gen.max_length = None
        gen.repetition_penalty = s["repetition_penalty"]
        gen.output_scores = True
        gen.return_dict_in_generate = True
        gen.num_beams = 1
        if s["greedy"]:
            # Warpers are not applied in greedy mode; neutral values keep the config validator quiet.
            gen.do_sample, gen.temperature, gen.top_k, gen.top_p = False, 1.0, 50, 1.0
        else:
            gen.do_sample, gen.temperature, gen.top_k, gen.top_p = True, s["temperature"], s["top_k"], s["top_p"]
        self.generation_config = gen
        log.info("transformers engine: %s on %s (%s) in %.1fs, sampling %s", engine_cfg.model, self.device,
                 engine_cfg.dtype, self.load_seconds, {k: v for k, v in s.items() if k != "source"})

    def render_prompt(self, user_text: str) -> str:
        return render_chat(self.processor, user_text)

    def process(self, req: EngineRequest) -> Any:
        """Processor inputs for one request (exposed for tests: pixel values, video_grid_thw, ...)."""
        meta = nominal_video_metadata(req.frames, self.video_fps)
        return self.processor(
            text=[req.prompt],
            videos=[req.frames],
            video_metadata=[meta],
            fps=self.video_fps,
            return_tensors="pt",
            **VIDEO_PROCESSOR_KWARGS,
        )

    def _generate_one(self, req: EngineRequest) -> EngineOutput:
        import torch

        want_grid = expected_video_grid(req.frames)
        inputs = self.process(req)
        got_grid = inputs["video_grid_thw"][0].tolist()
        if got_grid != want_grid:  # would mean the processor resized or resampled the frames
            raise RuntimeError(f"processor produced video_grid_thw {got_grid}, expected {want_grid}")
        inputs = inputs.to(self.device)
        prompt_len = int(inputs["input_ids"].shape[1])
        budget = self.engine_cfg.max_model_len
        if prompt_len + self.generation_config.max_new_tokens > budget:
            raise ValueError(f"prompt of {prompt_len} tokens + max_new_tokens {self.generation_config.max_new_tokens} "
                             f"exceeds engine.max_model_len {budget}")
        torch.manual_seed(int(req.seed))  # seeds every device; the reference path is sequential
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        gen_ids = out.sequences[0, prompt_len:].tolist()
        scores = torch.stack([s[0] for s in out.scores]).float()  # (steps, vocab): processed scores
        logp = torch.log_softmax(scores, dim=-1)[:, self.digit_ids].cpu().numpy().astype(np.float32)
        n = len(gen_ids)
        return EngineOutput(
            request_id=req.request_id,
            text=self.tokenizer.decode(gen_ids, skip_special_tokens=True),
            token_ids=gen_ids,
            digit_logprobs=logp[:n],
            prompt_tokens=prompt_len,
            output_tokens=n,
        )

    def generate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        outputs = []
        for req in requests:
            try:
                outputs.append(self._generate_one(req))
            except Exception as e:  # one bad request must not take the batch down
                log.warning("request %s failed: %s", req.request_id, one_line(e))
                outputs.append(EngineOutput(request_id=req.request_id, error=one_line(e)))
        return outputs

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
