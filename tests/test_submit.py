"""`vscore submit` for real: a Ray head started with `ray start --head` (dashboard + job server) on
loopback in its own temp dir, the scoring job submitted through Ray's JobSubmissionClient with the repo as
working dir, its logs followed, its exit status returned, and the Parquet it wrote read back.

The head runs in its own session (setsid) and is stopped by this module's finalizer only: every
process it started (found by walking its process tree, including job drivers, which Ray starts in a
session of their own) is signalled by pid. `ray stop` is never called: it stops every Ray on the
machine, including other people's.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import psutil
import pyarrow.dataset as pads
import pytest

from pipeline.schema import make_row_id
from pipeline.tools.pack import pack

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "videos"
JOB_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop_tree(proc: subprocess.Popen, grace_s: float = 4.0) -> None:
    """SIGTERM then SIGKILL to the `ray start` process, its process group and every descendant, by pid."""
    if proc.poll() is not None and not psutil.pid_exists(proc.pid):
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the session `ray start` leads (start_new_session=True)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=grace_s if sig == signal.SIGTERM else 5)
        family = alive
        if not family:
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _wait_dashboard(address: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    """Until the `ray start` node's dashboard answers (or the process exits, or `timeout` passes: a test failure
    with the end of its log)."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            pytest.fail(f"dashboard not up after {timeout} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)


class Head(NamedTuple):
    address: str  # dashboard / job server URL
    temp: Path    # Ray's --temp-dir
    gcs: str      # GCS address, for drivers that connect directly


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with free ports; yields its dashboard URL and temp dir."""
    temp = tempfile.mkdtemp(prefix="vsray", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    gcs, dash, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(JOB_ENV)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=2",
           f"--object-store-memory={400 * 1024**2}", f"--temp-dir={temp}", "--disable-usage-stats"]
    log_path = Path(temp) / "ray-start.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def stop() -> None:
        _stop_tree(proc)
        shutil.rmtree(temp, ignore_errors=True)

    atexit.register(stop)  # even if the fixture's teardown never runs (interrupted session)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_dashboard(address, proc, log_path, timeout=120)
        yield Head(address, Path(temp), f"127.0.0.1:{gcs}")
    finally:
        stop()
        atexit.unregister(stop)
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """Two bundled videos packed into two local shards, and the tiny model."""
    from pipeline.dev.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("submit")
    src = root / "src"
    src.mkdir()
    recs = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]
    recs = sorted(recs, key=lambda r: r["size"])[:2]
    for r in recs:
        name = Path(r["file"]).name
        (src / name).write_bytes((SAMPLES / r["file"]).read_bytes())
        (src / name).with_suffix(".txt").write_text(r["prompt"])
    shards = pack(src, str(root / "shards"), shard_size=1)
    model = build_tiny_model(root / "model")
    return root, shards, model


def _overrides(root: Path, model: Path, out: Path) -> list[str]:
    return [f"input.shards={root}/shards/shard-*.tar", "input.storage.endpoint_url=null", f"engine.model={model}",
            f"output.path={out}", "sampling.max_new_tokens=16", "ray.progress_bars=false", "ray.object_store_memory=null"]


def test_vscore_submit_round_trip(ray_head, job_inputs):
    """The CLI: `vscore submit configs/local.yaml ... --address URL` prints the job id, follows the logs
    and exits 0; the job's Parquet has one row per packed sample."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    root, shards, model = job_inputs
    out = root / "scores"
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", "configs/local.yaml",
                          *_overrides(root, model, out), "--address", ray_head.address, "--working-dir", str(REPO)],
                         cwd=REPO, env={**os.environ, **JOB_ENV}, capture_output=True, text=True, timeout=600)
    wall = time.time() - t0
    print(f"submit round trip: {wall:.1f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    job_id = res.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_"), res.stdout[:500]
    assert "run vs2-" in res.stdout or "run vs2-" in res.stderr  # the driver's log line came through the tail
    info = JobSubmissionClient(ray_head.address).get_job_info(job_id)
    assert info.status == JobStatus.SUCCEEDED and info.driver_exit_code == 0
    assert info.metadata["vscore_config"] == "configs/local.yaml"
    assert str(Path(sys.executable)) in info.entrypoint and "jobs/score.py" in info.entrypoint

    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()
    n = sum(s["samples"] for s in shards)
    assert table.num_rows == n == 2
    rows = table.to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(make_row_id(r["shard"], r["key"]) for r in rows)
    assert all(r["status"] == "ok" and r["run_id"] == info.metadata["vscore_run_id"] for r in rows)
    summary = json.loads(next((out / "_vscore").glob("summary-*.json")).read_text())
    assert summary["rows_out"] == summary["rows_in"] == n


def test_failed_job_exit_status(ray_head, job_inputs):
    """A job that fails on the cluster (its shard glob matches nothing there) exits non-zero."""
    from pipeline.run.submit import submit

    root, _, model = job_inputs
    chunks: list[str] = []
    overrides = _overrides(root, model, root / "never") + [f"input.shards={root}/nowhere/shard-*.tar"]
    job_id, code = submit(REPO / "configs" / "local.yaml", overrides, address=ray_head.address, working_dir=REPO,
                          out=chunks.append, timeout_s=300)
    assert code == 1, "".join(chunks)[-2000:]
    assert "no shards match" in "".join(chunks)
    assert not (root / "never").exists()


def test_head_writes_prometheus_service_discovery(ray_head):
    """infra/prometheus/prometheus.yml points Prometheus at <temp dir>/prom_metrics_service_discovery.json:
    a live head writes it, and the endpoints it lists serve Prometheus metrics."""
    path = ray_head.temp / "prom_metrics_service_discovery.json"
    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:
        time.sleep(1)
    body = ""
    while "# TYPE ray_" not in body and time.time() < deadline + 60:  # the node's exporter starts after the file
        body = _scrape(ray_head)
        time.sleep(2)
    assert "# TYPE ray_" in body


def _scrape(head: Head) -> str:
    path = head.temp / "prom_metrics_service_discovery.json"
    body = ""
    for target in (t for group in json.loads(path.read_text()) for t in group["targets"]):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{int(target.rsplit(':', 1)[1])}/metrics", timeout=5) as r:
                body += r.read().decode()
        except OSError:
            continue
    return body


def _sample(body: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus sample `name{labels...}` in an exposition body (None if absent)."""
    import re

    for line in body.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


def test_vscore_metrics_reach_prometheus(ray_head):
    """The run counters a stage reports (pipeline.run.stats) come out of the node's Prometheus endpoint with
    the run id: counters summed, errors by stage, gauges set by the driver. Ray prefixes application metrics
    with `ray_` and counters get Prometheus' `_total`: the series are `ray_vscore_*` (as documented)."""
    import ray

    from pipeline.run import stats

    if ray.is_initialized():  # a local Ray left by an earlier test's `run()` (it starts one when none is up)
        ray.shutdown()
    ray.init(address=ray_head.gcs, log_to_driver=False)
    try:
        handle = stats.create("vscore-stats-metrics-test", "vs2-metricstest")
        reporter = stats.Reporter("vscore-stats-metrics-test")
        reporter({"rows_scored": 3, "rows_ok": 2, "errors_decode": 1, "output_tokens": 120})
        reporter({"rows_scored": 4, "rows_ok": 4, "output_tokens": 80})
        ray.get(handle.set_gauges.remote({"videos_per_s": 2.5, "eta_s": 42.0}))
        assert ray.get(handle.snapshot.remote())["rows_scored"] == 7
        want = {("ray_vscore_rows_scored_total", ()): 7, ("ray_vscore_rows_ok_total", ()): 6,
                ("ray_vscore_output_tokens_total", ()): 200, ("ray_vscore_errors_total", (("stage", "decode"),)): 1,
                ("ray_vscore_videos_per_s", ()): 2.5, ("ray_vscore_eta_s", ()): 42.0}
        deadline, got = time.time() + 90, {}
        while time.time() < deadline:  # Ray's agents export every few seconds
            body = _scrape(ray_head)
            got = {k: _sample(body, k[0], run_id="vs2-metricstest", **dict(k[1])) for k in want}
            if got == want:
                break
            time.sleep(3)
        assert got == want
        ray.kill(handle)
    finally:
        ray.shutdown()


def test_config_outside_working_dir_is_refused(tmp_path):
    from pipeline.run.submit import submit

    cfg = tmp_path / "c.yaml"
    shutil.copy(REPO / "configs" / "local.yaml", cfg)
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="outside the working dir"):
        submit(cfg, [], address="http://127.0.0.1:1", working_dir=REPO)


def test_runtime_env_merge_and_entrypoint_quoting():
    from pipeline.run.submit import build_entrypoint, build_runtime_env, is_loopback

    env = build_runtime_env(REPO, {"env_vars": {"A": 1}, "excludes": ["big/"], "pip": ["x"]})
    assert env["working_dir"] == str(REPO) and env["env_vars"]["A"] == "1" and env["pip"] == ["x"]
    assert {".venv/", ".git/", "cache/", "tmp/", "vscore-demo/", "big/"} <= set(env["excludes"])
    ep = build_entrypoint("configs/local.yaml", ["output.path=s3://b/x y", "a=[1, 2]"], "python")
    assert ep == "python jobs/score.py configs/local.yaml 'output.path=s3://b/x y' 'a=[1, 2]'"
    assert is_loopback("http://127.0.0.1:8265") and is_loopback("localhost:8265") and not is_loopback("http://head:8265")
