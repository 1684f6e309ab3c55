"""A lost node whose work the survivors can take (issue 16, item 1, the second shape): two `ray start` nodes on one
machine, BOTH offering the "GPU role" resource `scorer` and 2 CPUs, a job submitted with `vscore submit`, then the
worker node killed (kill -9 of its raylet, agents and workers) mid-run. Every actor kind of the plan still fits on
the head, so nothing is missing for `ray.capacity_timeout_s` to act on. What happens is recorded in docs/cluster.md:
the run finishes on the head with every row exactly once, or it stops with one line (Ray Data gave up on a batch
of the lost scoring actor; or nothing moved for `ray.no_progress_timeout_s` because a lost decode actor is being
restarted on the head where there is no room for it) and the same job submitted again completes exactly once.

Its own module (and cluster): the two-node cluster of tests/test_cluster_faults.py has no `scorer` on the head, and
two clusters at once would not fit this 2-core machine.
"""

from __future__ import annotations

import time

import pytest

from tests.test_cluster_faults import (Cluster, _assert_exactly_once, _commits, _overrides, _record, _submit,
                                       _submit_then_kill_worker, many_shards)  # noqa: F401 - many_shards is a fixture


NO_PROGRESS_S = 120  # the run's no-progress bound (ray.no_progress_timeout_s): a hang ends in bounded time


@pytest.fixture(scope="module")
def twin_cluster():
    c = Cluster(head_resources={"scorer": 1})
    try:
        c.start_worker()
        yield c
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.heavy
def test_lost_node_whose_work_fits_on_the_survivor(twin_cluster, many_shards, tmp_path):  # noqa: F811
    cluster = twin_cluster
    root, shards, n = many_shards
    out = tmp_path / "scores"
    log1 = tmp_path / "submit1.log"
    t0 = time.time()
    over = [*_overrides(root, out, timeout_s=60), f"ray.no_progress_timeout_s={NO_PROGRESS_S}"]
    proc, killed_at, at_kill = _submit_then_kill_worker(cluster, over, out, log1)
    code = proc.wait(timeout=600)
    ended_after = time.time() - killed_at
    text = log1.read_text()
    if code == 0:  # finished on the survivor
        _assert_exactly_once(out, shards, n)
        _record("node-lost-survivor", f"{n} samples; killed the worker node at {at_kill} committed rows ({killed_at - t0:.0f} s "
                f"in); the job SUCCEEDED on the head alone {ended_after:.0f} s after the kill; {n} rows exactly once, all ok")
        return
    lines = [ln for ln in text.splitlines() if ln.startswith("vscore score: run ")]
    assert code == 1 and len(set(lines)) == 1, text[-4000:]
    # Ray Data gave up on a batch of an actor on the lost node (its retries spent while the actor was unreachable), or
    # nothing moved for ray.no_progress_timeout_s (a lost actor restarting on the survivor where there is no room)
    assert ("a node was lost" in lines[0] and "the surviving nodes can host every actor kind" in lines[0]) or \
        f"no progress for {NO_PROGRESS_S} s" in lines[0], lines[0]
    assert "driver exit code 2" in text, text[-4000:]
    committed = _commits(out)
    t1 = time.time()
    proc = _submit(cluster, over, tmp_path / "submit2.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "submit2.log").read_text()[-4000:]
    _assert_exactly_once(out, shards, n)
    _record("node-lost-survivor", f"{n} samples; killed the worker node at {at_kill} committed rows ({killed_at - t0:.0f} s in); "
            f"the job FAILED {ended_after:.0f} s after the kill with: {lines[0]}; rerun on the head alone: "
            f"{time.time() - t1:.0f} s, {n - committed} rows scored, {n} rows exactly once, all ok")


@pytest.mark.slow
def test_no_progress_stops_the_run_with_one_line(ray_local, tmp_path):  # noqa: F811
    """`ray.no_progress_timeout_s`: a run in which nothing moves for that long (here an engine taking 60 s per
    request; on a cluster, a lost node's batches waiting for an actor that has no room to restart) stops with one
    line and the committed count, not Ray Data's multi-line ExecutionTimeoutError."""
    from pipeline.config import ScoreConfig
    from pipeline.errors import CapacityError
    from pipeline.run.job import run
    from pipeline.tools.pack import pack
    from tests.test_submit import SAMPLES

    pack(SAMPLES, str(tmp_path / "shards"), shard_size=4)
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/shard-*.tar", "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "actors": 1, "num_gpus": 0, "num_cpus": 0.25,
                   "batch_size": 2, "batches_in_flight": 1, "engine_kwargs": {"sleep_s": 60}},
        "output": {"path": str(tmp_path / "scores"), "min_rows_per_file": 2},
        "ray": {"progress_bars": False, "no_progress_timeout_s": 10},
    })
    t0 = time.time()
    with pytest.raises(CapacityError) as info:
        run(cfg, progress_every_s=60)
    line = str(info.value)
    assert "\n" not in line and "stopped: no progress for 10 s" in line and "0 rows committed" in line, line
    assert time.time() - t0 < 120
