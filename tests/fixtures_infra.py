"""Session fixtures for real infrastructure: a moto S3 server on loopback and a local Ray."""

from __future__ import annotations

import os

import pytest

from pipeline.dev.s3_server import FAKE_CREDENTIALS, EmbeddedS3

# before any Ray starts (a test that calls `run` without the `ray_local` fixture starts one, and later tests
# reuse it): its workers then carry the embedded S3 server's fake credentials whichever test came first
for _k, _v in FAKE_CREDENTIALS.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3():
    with EmbeddedS3(buckets=["vscore-test"]) as server:
        yield server


@pytest.fixture(scope="session")
def ray_local(s3):
    """A local Ray started after the S3 server, so workers inherit its (fake) credentials."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
