"""Session fixtures: the tiny random Qwen2.5-VL checkpoint (pipeline.dev.tiny_model), built once per session,
and the format-trained tiny judge (pipeline.dev.tiny_judge), built once per source version and cached.

Import them where needed: `from tests.fixtures_model import tiny_model_dir  # noqa: F401`.
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


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    """The tiny model under the name the pipeline tests use (one build per session, shared by all modules)."""
    return tiny_model_dir


def judge_cache_key() -> str:
    """The judge's cache key: the sources that build it and the torch/transformers versions."""
    import hashlib

    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for name in ("dev/tiny_model.py", "dev/tiny_judge.py", "vs2/templates.py", "vs2/chat.py"):  # its inputs
        h.update((REPO / "pipeline" / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_judge_dir() -> Path:
    """Directory of the format-trained tiny judge (seed 0): same loading as the tiny model; sampled replies
    parse with the strict official regex. Training takes 15-25 s, so it is cached under cache/tiny-judge/
    keyed by its sources (built into a temporary name, then renamed: concurrent sessions are safe)."""
    import shutil
    import tempfile

    from pipeline.dev.tiny_judge import is_test_judge
    from pipeline.dev.tiny_model import build_tiny_model

    root = REPO / "cache" / "tiny-judge"
    final = root / judge_cache_key()
    if not is_test_judge(final):
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        build_tiny_model(tmp / "model", seed=0, judge=True)
        try:
            (tmp / "model").rename(final)
        except OSError:  # another session finished first: use its (identical) copy
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return final
