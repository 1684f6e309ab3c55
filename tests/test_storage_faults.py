"""Storage faults: with a proxy failing ~20% of S3 requests (503 SlowDown, 500, connection resets) in
front of the moto server, a run reading shards from S3 and writing scores to S3 completes with every
row exactly once and no error rows. Retries are s3fs/botocore's (StorageOptions.retries)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.config import ScoreConfig, StorageOptions
from pipeline.run.job import run
from pipeline.storage import filesystem
from pipeline.tools.pack import pack
from tests.fault_proxy import FaultProxy

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def test_flaky_s3_run_completes(ray_local, s3, tmp_path):  # noqa: F811
    direct = StorageOptions(endpoint_url=s3.endpoint_url)
    shards = pack(SAMPLES, "s3://vscore-test/flaky/shards", shard_size=2, storage=direct)
    n = sum(s["samples"] for s in shards)
    with FaultProxy(s3.port, fail_fraction=0.2, seed=7) as proxy:
        flaky = {"endpoint_url": proxy.endpoint_url, "retries": 12}
        cfg = ScoreConfig.model_validate({
            "input": {"shards": "s3://vscore-test/flaky/shards/shard-*.tar", "storage": flaky, "samples_per_block": 2},
            "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
            "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "actors": 1, "num_gpus": 0, "num_cpus": 0.25,
                       "batch_size": 2, "batches_in_flight": 1},
            "output": {"path": "s3://vscore-test/flaky/scores", "storage": flaky, "min_rows_per_file": 2},
            "ray": {"progress_bars": False},
        })
        summary = run(cfg, progress_every_s=60)
        faults = {k: v for k, v in proxy.counts.items() if k != "forwarded"}
    assert sum(faults.values()) >= 5, faults  # the proxy really failed requests
    fs, root = filesystem("s3://vscore-test/flaky/scores", direct)
    rows = pads.dataset(root, format="parquet", partitioning="hive", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table().to_pylist()
    ids = [r["row_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n == summary["rows_out"]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    print(json.dumps(faults))
