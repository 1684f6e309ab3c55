"""A benchmark- and test-only engine that returns a fixed output at (almost) zero cost. Never a default.

Select it with `engine.kind: "pipeline.engines.fixed:FixedOutputEngine"`. It measures what the pipeline
itself costs (read, decode, Ray, serialisation, sink) without a model, and injects engine faults in
tests: with `engine_kwargs: {crash_on: "TEXT"}` the process hard-exits when a request's prompt contains
TEXT, as an engine that segfaults or is OOM-killed would; with `engine_kwargs: {dead_once: PATH}` the
first engine to generate (across processes: PATH records it) raises `EngineDeadError`, as vLLM's engine
core does when its process is gone, and every engine start is appended to PATH + ".starts".
`fail_while: [PATH, TEXT]` fails (a per-request error, the engine stays up) every request whose prompt
contains TEXT while PATH exists (a transient failure, for `--retry-errors`).
`record_to: DIR` writes an empty file named after each request id into DIR (which samples reached the
engine), `sleep_s: S` spends S seconds per request (a measurable engine time).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from pipeline.engines.base import EngineOutput, EngineRequest

FIXED_TEXT = ("<think>\nbenchmark-only fixed output\n</think>\n\n(1) visual quality: 3\n"
              "(2) text-to-video alignment: 3\n(3) physical/common-sense consistency: 3\n")


class EngineDeadError(RuntimeError):
    """Named like vLLM's (vllm.v1.engine.exceptions.EngineDeadError): the scoring stage recognises a dead
    engine by this name."""


class FixedOutputEngine:
    name = "fixed"
    tokenizer: Any = None

    def __init__(self, engine_cfg: Any, sampling_cfg: Any) -> None:
        self.text = engine_cfg.engine_kwargs.get("text", FIXED_TEXT)
        self.crash_on = engine_cfg.engine_kwargs.get("crash_on")
        self.dead_once = engine_cfg.engine_kwargs.get("dead_once")
        if self.dead_once:
            with open(self.dead_once + ".starts", "a") as f:
                f.write(f"{os.getpid()}\n")
        self.record_to = engine_cfg.engine_kwargs.get("record_to")
        self.sleep_s = float(engine_cfg.engine_kwargs.get("sleep_s", 0.0))
        self.fail_while = engine_cfg.engine_kwargs.get("fail_while")

    def render_prompt(self, user_text: str) -> str:
        return user_text

    def generate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        if self.dead_once and not os.path.exists(self.dead_once):
            with open(self.dead_once, "w") as f:
                f.write(str(os.getpid()))
            raise EngineDeadError("EngineCore encountered an issue (injected)")
        outs = []
        for r in requests:
            if self.crash_on and self.crash_on in r.prompt:
                os._exit(17)  # a hard engine death: no exception, no cleanup
            if self.fail_while and self.fail_while[1] in r.prompt and os.path.exists(self.fail_while[0]):
                outs.append(EngineOutput(request_id=r.request_id, error="RuntimeError: injected transient failure"))
                continue
            if self.record_to:
                os.makedirs(self.record_to, exist_ok=True)
                open(os.path.join(self.record_to, r.request_id.replace("/", "_")), "w").close()
            if self.sleep_s:
                time.sleep(self.sleep_s)
            outs.append(EngineOutput(request_id=r.request_id, text=self.text, token_ids=[],
                                     digit_logprobs=np.zeros((0, 5)), prompt_tokens=int(r.frames.shape[0]),
                                     output_tokens=len(self.text.split())))
        return outs

    def close(self) -> None:
        pass
