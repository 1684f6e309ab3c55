"""Storage faults: with a proxy failing ~20% of S3 requests (503 SlowDown, 500, connection resets) in
front of the moto server, a run reading shards from S3 and writing scores to S3 completes with every
row exactly once and no error rows. Retries are s3fs/botocore's (StorageOptions.retries)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

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


@pytest.mark.slow
@pytest.mark.heavy
def test_put_access_denied_mid_run_stops_with_one_line_then_rerun(ray_local, s3, tmp_path):  # noqa: F811
    """The output bucket turns read-only (every PUT answered 403 AccessDenied) once the first rows are committed:
    the run stops within 2 minutes with one line naming the URL and the error (no retry loop), and a rerun with the
    output writable again completes with every row exactly once."""
    from pipeline.errors import StorageAccessError

    direct = StorageOptions(endpoint_url=s3.endpoint_url)
    src = tmp_path / "src"
    src.mkdir()
    recs = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for c in range(2):
        for i, r in enumerate(recs):
            (src / f"c{c}_{i}.mp4").symlink_to(SAMPLES / r["file"])
            (src / f"c{c}_{i}.txt").write_text(r["prompt"])
    shards = pack(src, "s3://vscore-test/denied/shards", shard_size=2, storage=direct)
    n = sum(s["samples"] for s in shards)
    fs, root = filesystem("s3://vscore-test/denied/scores", direct)
    with FaultProxy(s3.port, fail_fraction=0.0) as proxy:
        store = {"endpoint_url": proxy.endpoint_url, "retries": 3}
        cfg = ScoreConfig.model_validate({
            "input": {"shards": "s3://vscore-test/denied/shards/shard-*.tar", "storage": store, "samples_per_block": 2},
            "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
            "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "actors": 1, "num_gpus": 0, "num_cpus": 0.25,
                       "batch_size": 2, "batches_in_flight": 1},
            "output": {"path": "s3://vscore-test/denied/scores", "storage": store, "min_rows_per_file": 2},
            "ray": {"progress_bars": False},
        })
        denied_at: list[float] = []

        def deny_after_first_commit() -> None:
            while not denied_at:
                if fs.exists(f"{root}/_vscore/commits") and fs.find(f"{root}/_vscore/commits"):
                    proxy.deny_writes = True
                    denied_at.append(time.time())
                time.sleep(0.2)
                fs.invalidate_cache()

        threading.Thread(target=deny_after_first_commit, daemon=True).start()
        with pytest.raises(StorageAccessError) as info:
            run(cfg, progress_every_s=60)
        stopped_s = time.time() - denied_at[0]
        line = str(info.value)
        assert "\n" not in line and ("PUT s3://vscore-test/denied/scores/" in line or "DELETE s3://vscore-test/denied/scores/" in line)
        assert "refused: Access Denied" in line, line
        assert stopped_s < 120, stopped_s
        refused = proxy.counts["403"]
        proxy.deny_writes = False
        summary = run(cfg, progress_every_s=60)
    rows = pads.dataset(root, format="parquet", partitioning="hive", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table().to_pylist()
    ids = [r["row_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n == summary["rows_out"] and all(r["status"] == "ok" for r in rows)
    print(f"[access-denied] {n} samples; stopped {stopped_s:.1f} s after PUTs were denied ({refused} refused requests), "
          f"{summary['rows_resumed']} rows committed before; rerun: {summary['wall_s']} s, {n} rows exactly once. Line: {line}")
