"""Model engines behind one small interface (`base.Engine`): vLLM (production) and transformers (reference);
`registry.make_engine` builds the one a config names."""

from pipeline.engines.base import Engine, EngineOutput, EngineRequest
from pipeline.engines.registry import make_engine

__all__ = ["Engine", "EngineOutput", "EngineRequest", "make_engine"]
