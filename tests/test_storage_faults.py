"""Storage faults: with a proxy failing ~20% of S3 requests (503 SlowDown, 500, connection resets) in
front of the moto server, a run reading shards from S3 and writing scores to S3 completes with every
row exactly once and no error rows. Retries are s3fs/botocore's (StorageOptions.retries)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import ScoreConfig, StorageOptions
from pipeline.run.job import run
from pipeline.storage import filesystem
from pipeline.tools.pack import pack
from tests.fault_proxy import FaultProxy
from tests.outputs import read_output

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
    rows = read_output("s3://vscore-test/flaky/scores", direct).to_pylist()
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
    rows = read_output("s3://vscore-test/denied/scores", direct).to_pylist()
    ids = [r["row_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n == summary["rows_out"] and all(r["status"] == "ok" for r in rows)
    print(f"[access-denied] {n} samples; stopped {stopped_s:.1f} s after PUTs were denied ({refused} refused requests), "
          f"{summary['rows_resumed']} rows committed before; rerun: {summary['wall_s']} s, {n} rows exactly once. Line: {line}")


def test_retries_counted_once_per_request_sent_again(s3):  # noqa: F811
    """Both retry layers are counted, one count per request sent again after a 503 SlowDown: botocore's (standard
    mode, with backoff) and s3fs's own loop, which takes over where botocore gives up (here: botocore may not retry)."""
    import fsspec

    from pipeline.storage import count_retries, take_retries

    direct, _ = filesystem("s3://vscore-test/layers", StorageOptions(endpoint_url=s3.endpoint_url))
    for i in range(8):
        direct.pipe_file(f"vscore-test/layers/{i}", f"object {i}".encode())
    with FaultProxy(s3.port, fail_fraction=0.0, seed=5, kinds=("503",)) as proxy:
        take_retries()
        fs, _ = filesystem("s3://vscore-test/layers", StorageOptions(endpoint_url=proxy.endpoint_url, retries=12))
        proxy.storm(0.8, 3)
        assert [fs.cat_file(f"vscore-test/layers/{i}") for i in range(8)] == [f"object {i}".encode() for i in range(8)]
        assert take_retries() == {"botocore": proxy.counts["503"]} and proxy.counts["503"] >= 3, proxy.counts
        bare, _ = fsspec.core.url_to_fs("s3://vscore-test/layers", endpoint_url=proxy.endpoint_url,
                                        config_kwargs={"retries": {"total_max_attempts": 1}})  # botocore: no retry
        bare.retries = 12
        count_retries(bare)
        before = proxy.counts["503"]
        proxy.storm(0.8, 3)
        assert [bare.cat_file(f"vscore-test/layers/{i}") for i in range(8)] == [f"object {i}".encode() for i in range(8)]
        assert take_retries() == {"s3fs": proxy.counts["503"] - before} and proxy.counts["503"] - before >= 3, proxy.counts


TIMING = ("decode_s", "score_s")  # wall seconds per row: the only columns two runs of the same config may differ in


def _scores(url: str, storage: StorageOptions) -> dict[str, dict]:
    rows = read_output(url, storage).to_pylist()
    out = {r["row_id"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}
    assert len(out) == len(rows), "a row id twice"
    return out


def _slowdown_storm(s3, tmp_path, name: str, storm_s: float, copies: int) -> dict:
    """Pack `copies` x the bundled clips, score them once without faults (the reference), then again through the
    fault proxy answering 80% of all requests 503 SlowDown for `storm_s` seconds from the run's first shard read (so it
    hits the run in full flow: reads, in-flight markers, data files, commit markers, state folds), then none. The stormy run must give every row
    exactly once, each as the reference has it, and count its retries: every 503 the proxy answered was retried
    (the run has no error rows, so no request gave up), so the summary's count equals the proxy's."""
    direct = StorageOptions(endpoint_url=s3.endpoint_url)
    src = tmp_path / "src"
    src.mkdir()
    recs = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for c in range(copies):
        for i, r in enumerate(recs):
            (src / f"c{c}_{i}.mp4").symlink_to(SAMPLES / r["file"])
            (src / f"c{c}_{i}.txt").write_text(r["prompt"])
    shards = pack(src, f"s3://vscore-test/{name}/shards", shard_size=2, storage=direct)
    n = sum(s["samples"] for s in shards)

    def cfg(endpoint: str, out: str) -> ScoreConfig:
        store = {"endpoint_url": endpoint}  # the default retry budget (StorageOptions.retries)
        return ScoreConfig.model_validate({
            "input": {"shards": f"s3://vscore-test/{name}/shards/shard-*.tar", "storage": store, "samples_per_block": 2},
            "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
            "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "actors": 1, "num_gpus": 0, "num_cpus": 0.25,
                       "batch_size": 2, "batches_in_flight": 1},
            "output": {"path": f"s3://vscore-test/{name}/{out}", "storage": store, "min_rows_per_file": 2,
                       "state_fold_every_s": 5},
            "ray": {"progress_bars": False},
        })

    run(cfg(s3.endpoint_url, "clean"), progress_every_s=60)
    reference = _scores(f"s3://vscore-test/{name}/clean", direct)
    assert len(reference) == n and all(r["status"] == "ok" for r in reference.values())
    with FaultProxy(s3.port, fail_fraction=0.0, seed=11, kinds=("503",)) as proxy:
        load = os.getloadavg()
        # from the first read of a shard: the driver has listed them; reads, scoring, writes and folds all run in it
        proxy.storm(0.8, storm_s, when=lambda method, path: method == "GET" and path.split("?")[0].endswith(".tar"))
        t0 = time.time()
        summary = run(cfg(proxy.endpoint_url, "storm"), progress_every_s=10)
        wall = time.time() - t0
        assert proxy.armed is None, "the storm never began"
        began = proxy.storm_started - (time.monotonic() - time.time())
        after_storm = time.time() - began - storm_s
        failed, forwarded = proxy.counts["503"], proxy.counts["forwarded"]
    got = _scores(f"s3://vscore-test/{name}/storm", direct)
    assert set(got) == set(reference) and summary["rows_out"] == n
    # Which of two identical clips is scored and which copies it (duplicate_of, with no tokens of its own) depends
    # on batch order: compare those columns as counts, everything else row by row.
    order = ("duplicate_of", "prompt_tokens", "output_tokens")
    bad = [rid for rid in reference if {k: v for k, v in got[rid].items() if k not in order}
           != {k: v for k, v in reference[rid].items() if k not in order}]
    for k in ("prompt_tokens", "output_tokens"):
        assert sorted(r[k] or 0 for r in got.values()) == sorted(r[k] or 0 for r in reference.values()), k
    assert sum(r["duplicate_of"] is None for r in got.values()) == sum(r["duplicate_of"] is None for r in reference.values())
    assert not bad, [{k: (got[r][k], reference[r][k]) for k in reference[r] if got[r][k] != reference[r][k]} for r in bad[:5]]
    retries = summary["storage_retries"]
    assert failed >= 3, proxy.counts  # the storm really failed requests (botocore backs off: few requests get through to fail)
    assert retries["total"] == sum(retries["by_layer"].values()) == sum(retries["by_stage"].values())
    assert retries["total"] == failed, (retries, proxy.counts)
    result = {"samples": n, "storm_s": storm_s, "wall_s": round(wall, 1), "storm_began_s": round(began - t0, 1),
              "run_went_on_after_storm_s": round(after_storm, 1), "503": failed, "forwarded": forwarded,
              "storage_retries": retries, "load_before": [round(x, 2) for x in load],
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(f"[slowdown-storm] {json.dumps(result)}")
    return result


def test_slowdown_storm_completes_and_counts_retries(ray_local, s3, tmp_path):  # noqa: F811
    """80% SlowDown for 12 s in the middle of the run (CI-sized; the issue's 60 s storm is the heavy test below)."""
    _slowdown_storm(s3, tmp_path, "storm12", storm_s=12, copies=2)


@pytest.mark.slow
@pytest.mark.heavy
def test_slowdown_storm_60s_completes_and_counts_retries(ray_local, s3, tmp_path):  # noqa: F811
    """The issue's storm: 80% SlowDown for 60 s, then 0%, over 4x the bundled clips, with the default retry budget."""
    _slowdown_storm(s3, tmp_path, "storm60", storm_s=60, copies=4)


@pytest.mark.slow
@pytest.mark.heavy
def test_default_retry_budget_survives_a_60s_storm_under_concurrency(s3):  # noqa: F811
    """A busy process (16 concurrent request chains, as a read task fetching manifest videos or a node's many
    writes) under 80% SlowDown for 60 s: botocore's retry quota runs dry within seconds, s3fs's loop carries the
    rest, and with the default budget no request gives up. (The old default, 10 attempts ~ 29 s, lost ~1.5% of the
    requests here after ~30 s each: docs/cluster.md.) Every 503 answered is counted as exactly one retry."""
    from pipeline.storage import take_retries

    direct, _ = filesystem("s3://vscore-test/busy", StorageOptions(endpoint_url=s3.endpoint_url))
    for i in range(16):
        direct.pipe_file(f"vscore-test/busy/{i}", b"x" * 1000)
    with FaultProxy(s3.port, fail_fraction=0.0, seed=3, kinds=("503",)) as proxy:
        fs, _ = filesystem("s3://vscore-test/busy", StorageOptions(endpoint_url=proxy.endpoint_url))
        fs.cat_file("vscore-test/busy/0")
        take_retries()
        proxy.storm(0.8, 60)
        t0, ok, failed, lock = time.time(), [0], [], threading.Lock()

        def chain(i: int) -> None:
            while time.time() - t0 < 70:
                try:
                    assert fs.cat_file(f"vscore-test/busy/{i}") == b"x" * 1000
                    with lock:
                        ok[0] += 1
                except Exception as e:  # noqa: BLE001 - a request that gave up: what this test must not see
                    with lock:
                        failed.append(f"{time.time() - t0:.0f} s: {e}")

        threads = [threading.Thread(target=chain, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counted = take_retries()
    print(f"[busy-storm] {ok[0]} requests ok, {len(failed)} gave up; proxy {proxy.counts}; retries counted {counted}")
    assert not failed, failed[:5]
    assert counted.get("s3fs", 0) > 0 and sum(counted.values()) == proxy.counts["503"], (counted, proxy.counts)
