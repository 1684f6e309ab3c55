"""Session fixture: the tiny random Qwen2.5-VL checkpoint (pipeline.dev.tiny_model), built once per session.

Import it where needed: `from tests.fixtures_model import tiny_model_dir  # noqa: F401`.
Also sets the offline / vLLM-on-CPU environment defaults (only where the caller has not set them),
keeping vLLM's caches, sockets and temp files inside the repository's ignored folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CACHE_ROOT": str(REPO / "cache" / "vllm"),
    "TORCHINDUCTOR_CACHE_DIR": str(REPO / "cache" / "inductor"),
    "VLLM_RPC_BASE_PATH": str(REPO / "tmp"),
    "TMPDIR": str(REPO / "tmp"),  # inherited by vLLM's engine-core and worker processes
}.items():
    os.environ.setdefault(_k, _v)
(REPO / "tmp").mkdir(exist_ok=True)
(REPO / "cache").mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of the tiny checkpoint (seed 0): loads like TIGER-Lab/VideoScore2 in transformers and vLLM."""
    from pipeline.dev.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen25vl") / "model", seed=0)
