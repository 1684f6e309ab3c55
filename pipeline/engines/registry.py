"""The engine registry: builds the engine named by `engine.kind` ('vllm', 'transformers' or a plug-in
'module:Class'), importing each engine's heavy dependencies only when it is chosen. Kept apart from
`base` so that the engines import the interface and the registry imports the engines (no cycle)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.engines.base import Engine

if TYPE_CHECKING:
    from pipeline.config import EngineConfig, SamplingConfig


def make_engine(engine: "EngineConfig", sampling: "SamplingConfig") -> Engine:
    """Build the engine named by `engine.kind`, importing its heavy dependencies lazily."""
    if engine.kind == "vllm":
        from pipeline.engines.vllm_engine import VLLMEngine

        return VLLMEngine(engine, sampling)
    if engine.kind == "transformers":
        from pipeline.engines.hf_engine import TransformersEngine

        return TransformersEngine(engine, sampling)
    if ":" in engine.kind:  # a custom engine class, e.g. a benchmark-only engine
        module, _, cls = engine.kind.partition(":")
        return getattr(importlib.import_module(module), cls)(engine, sampling)
    raise ValueError(f"unknown engine kind {engine.kind!r}; expected 'vllm', 'transformers' or 'module:Class'")
