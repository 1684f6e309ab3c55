"""Shared fixtures for every test module: the offline/vLLM-on-CPU environment defaults, the tiny model and
the format-trained tiny judge (fixtures_model), the moto S3 server and the local Ray (fixtures_infra)."""

from tests.fixtures_model import model_dir, tiny_judge_dir, tiny_model_dir  # noqa: F401  (sets env defaults at import)
from tests.fixtures_infra import ray_local, s3  # noqa: F401
