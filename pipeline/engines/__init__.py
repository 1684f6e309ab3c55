"""Model engines behind one small interface (`base.Engine`): vLLM (production) and transformers (reference)."""

from pipeline.engines.base import Engine, EngineOutput, EngineRequest, make_engine

__all__ = ["Engine", "EngineOutput", "EngineRequest", "make_engine"]
