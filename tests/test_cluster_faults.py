"""Cluster faults for real, on one machine: two Ray nodes started with `ray start` (a head with 2 CPUs and a
"GPU" worker with 2 CPUs and the custom resource `scorer`, which the scoring actors request through
`engine.resources`), jobs submitted with `vscore submit`, and then:

1. the worker node lost mid-run (kill -9 of its raylet, agents and workers): the scoring actors cannot be
   placed anywhere else, so the run stops with one line after `ray.capacity_timeout_s` (instead of hanging),
   and a rerun with the node back completes; every row exactly once, each as a fault-free run gives it;
2. the job's driver killed mid-run, then the same job submitted again (KubeRay's `backoffLimit` retry):
   exactly once, every row ok.

Fast checks of the pieces (plan fit, pool minimum, absolute paths) run without Ray.

Processes are stopped by pid (the process trees of the `ray start` processes this module started), never
with `ray stop`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest

from tests.test_submit import JOB_ENV, REPO, SAMPLES, _free_ports, _stop_tree, _wait_dashboard

FIXED = "pipeline.engines.fixed:FixedOutputEngine"
COPIES = 12  # the 7 bundled clips x 12 = 84 samples


# ---------------------------------------------------------------------------------------------- fast checks


def _cfg(**over):
    from pipeline.config import load_config

    items = [f"{k}={v}" for k, v in over.items()]
    return load_config(REPO / "configs" / "local.yaml", items)


def test_pools_have_a_minimum_of_one():
    from pipeline.run.plan import make_plan

    plan = make_plan(_cfg(**{"decode.actors": 4}), {"CPU": 8.0})
    assert plan.decode_actors_min == 1 and plan.decode_actors_max == 4
    assert make_plan(_cfg(**{"decode.actors": 4, "decode.min_actors": 2}), {"CPU": 8.0}).decode_actors_min == 2


def test_auto_decode_actors_capped_by_memory_resource():
    from pipeline.run.plan import make_plan

    cfg = _cfg(**{"decode.actors": "auto", "decode.actors_per_engine": 8, "decode.memory": 2 * 2**30})
    assert make_plan(cfg, {"CPU": 16.0, "memory": 5 * 2**30}).decode_actors_max == 2  # 5 GiB / 2 GiB per actor
    assert make_plan(cfg, {"CPU": 16.0, "memory": 64 * 2**30}).decode_actors_max == 8  # then CPUs/actors_per_engine bind


def test_unplaceable_names_what_is_missing():
    from pipeline.run.plan import make_plan, unplaceable

    cfg = _cfg(**{"engine.resources": "{scorer: 1}", "engine.num_cpus": 0.5})
    plan = make_plan(cfg, {"CPU": 4.0})
    head, gpu = {"CPU": 2.0, "memory": 8e9}, {"CPU": 2.0, "scorer": 1.0, "memory": 8e9}
    assert unplaceable(cfg, plan, [head, gpu]) == []
    (line,) = unplaceable(cfg, plan, [head])
    assert "scoring actor" in line and "missing scorer" in line and "CPU=2" in line
    big = _cfg(**{"decode.num_cpus": 4})
    (line,) = unplaceable(big, make_plan(big, {"CPU": 4.0}), [head, head])
    assert "decode actor" in line and "missing CPU" in line  # 4 CPUs in all, but no single node has them
    hungry = _cfg(**{"decode.memory": 16 * 2**30})  # decode.memory is a per-actor request: no 8 GB node hosts it
    (line,) = unplaceable(hungry, make_plan(hungry, {"CPU": 4.0}), [head, gpu])
    assert "decode actor" in line and "missing memory" in line and "memory=16 GiB" in line
    gpu_cfg = _cfg(**{"engine.num_gpus": 1})
    assert "missing GPU" in unplaceable(gpu_cfg, make_plan(gpu_cfg, {"CPU": 4.0}), [head])[0]


def test_plan_that_cannot_fit_fails_at_once_with_one_line(tmp_path):
    """On a local Ray without the custom resource: CapacityError (one line, exit 2 in the CLI) before anything
    is read or written."""
    env = {**os.environ, **JOB_ENV, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="vsfit", dir="/tmp")}
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").write_bytes(b"")
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(REPO / "configs" / "local.yaml"),
                              f"input.shards={shards}/shard-*.tar", f"output.path={tmp_path / 'out'}", f"engine.kind={FIXED}",
                              "engine.resources={scorer: 1}", "ray.num_cpus=2", "ray.object_store_memory=100000000",
                              "ray.progress_bars=false"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert err[-1].startswith("vscore score: the plan does not fit this cluster: no node can host a scoring actor")
    assert "missing scorer" in err[-1] and "Traceback" not in res.stderr
    assert time.time() - t0 < 120


def test_output_paths_made_absolute(tmp_path, monkeypatch):
    from pipeline.run.job import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(**{"output.path": "rel/scores"})
    fixed = absolute_paths(cfg)
    assert fixed.output.path == str(tmp_path / "rel" / "scores") and fixed.resolved_run_id() == cfg.resolved_run_id()
    s3 = _cfg(**{"output.path": "s3://b/x"})
    assert absolute_paths(s3).output.path == "s3://b/x"


# ---------------------------------------------------------------------------------------------- two nodes


class Cluster:
    """A head (2 CPUs) and a "GPU" worker (2 CPUs + scorer) on 127.0.0.1, each `ray start --block` in its own
    session with its own temp dir and free ports."""

    def __init__(self, head_resources: dict[str, float] | None = None) -> None:
        self.temp = tempfile.mkdtemp(prefix="vscf", dir="/tmp")  # short: unix socket paths < 108 chars
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        self.env.update(JOB_ENV, PYTHONPATH=str(REPO))
        gcs, dash, client, agent, mport = _free_ports(5)
        self.gcs = f"127.0.0.1:{gcs}"
        self.address = f"http://127.0.0.1:{dash}"
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
               f"--metrics-export-port={mport}", "--num-cpus=2", f"--object-store-memory={300 * 1024**2}",
               f"--temp-dir={self.temp}", "--disable-usage-stats"]
        if head_resources:
            cmd.append(f"--resources={json.dumps(head_resources)}")
        self.head_scorer = "scorer" in (head_resources or {})
        self.head = self._popen(cmd, "head")
        atexit.register(self.stop)
        _wait_dashboard(self.address, self.head, Path(self.temp) / "head.log")
        self.worker: subprocess.Popen | None = None

    def _popen(self, cmd: list[str], name: str) -> subprocess.Popen:
        with open(Path(self.temp) / f"{name}.log", "ab") as logf:
            return subprocess.Popen(cmd, env=self.env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def start_worker(self) -> None:
        agent, mport, mgr = _free_ports(3)
        ray = str(Path(sys.executable).with_name("ray"))
        # the worker joins the head's session but keeps its files in a temp dir of its own, as a node on another
        # machine does: with one shared dir, the worker's runtime-env agent unpacked the job's working dir over the
        # head's copy while the driver ran, and the driver's next lazy import failed (No module named ...)
        wtemp = Path(self.temp) / f"w{int(time.time()) % 10000}"
        cmd = [ray, "start", "--block", f"--address={self.gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               f"--temp-dir={wtemp}",
               '--resources={"scorer": 1}', f"--object-store-memory={300 * 1024**2}", f"--dashboard-agent-listen-port={agent}",
               f"--metrics-export-port={mport}", f"--node-manager-port={mgr}", "--disable-usage-stats"]
        want = 2 if self.head_scorer else 1  # the head's own `scorer` counts too
        self.worker = self._popen(cmd, "worker")
        deadline = time.time() + 180
        while self.scorer_nodes() < want:
            if self.worker.poll() is not None or time.time() > deadline:
                pytest.fail(f"worker did not join:\n{(Path(self.temp) / 'worker.log').read_text()[-3000:]}")
            time.sleep(1)

    def _state(self, what: str, has: str) -> list[dict]:
        """Records of Ray's state API on the dashboard (`what`: nodes, actors) that hold the key `has`."""
        try:
            with urllib.request.urlopen(f"{self.address}/api/v0/{what}?limit=1000&detail=true", timeout=10) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            return []

        def walk(x):
            if isinstance(x, dict):
                if has in x and "state" in x:
                    yield x
                else:
                    for v in x.values():
                        yield from walk(v)
            elif isinstance(x, list):
                for v in x:
                    yield from walk(v)

        return list(walk(body))

    def scorer_nodes(self) -> int:
        """Alive nodes offering `scorer`, as the GCS sees them."""
        return sum(1 for n in self._state("nodes", "resources_total") if n["state"] == "ALIVE" and "scorer" in (n["resources_total"] or {}))

    def run_actors_off_the_head(self) -> dict[str, str]:
        """The run's named actors (stats, in-flight registry) alive on a node other than the head: name -> node."""
        head = {n["node_id"] for n in self._state("nodes", "resources_total") if n.get("is_head_node")}
        assert len(head) == 1
        named = [a for a in self._state("actors", "actor_id") if a["state"] == "ALIVE" and (a.get("name") or "").startswith("vscore-")]
        assert {a["name"].split("-")[1] for a in named} >= {"stats", "inflight"}, named
        return {a["name"]: a["node_id"] for a in named if a["node_id"] not in head}

    def kill_worker(self) -> float:
        """kill -9 the worker node: its `ray start`, raylet, agents and every worker process, at once."""
        assert self.worker is not None
        family = [psutil.Process(self.worker.pid), *psutil.Process(self.worker.pid).children(recursive=True)]
        t = time.time()
        for p in family:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        self.worker.wait(timeout=10)
        self.worker = None
        return t

    def driver_pids(self, marker: str) -> list[int]:
        out = []
        for p in psutil.Process(self.head.pid).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if "jobs/score.py" in cmd and marker in cmd and "python" in Path(p.cmdline()[0]).name:  # not the `sh -c` around it
                out.append(p.pid)
        return out

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            if proc is not None:
                _stop_tree(proc)
        shutil.rmtree(self.temp, ignore_errors=True)
        atexit.unregister(self.stop)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start_worker()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """The 7 bundled clips x COPIES as distinct samples (symlinked files with prompt sidecars), 4 per shard."""
    from pipeline.tools.pack import pack

    root = tmp_path_factory.mktemp("faults")
    src = root / "src"
    src.mkdir()
    recs = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for c in range(COPIES):
        for i, r in enumerate(recs):
            name = f"c{c:02d}_{i}"
            (src / f"{name}.mp4").symlink_to(SAMPLES / r["file"])
            (src / f"{name}.txt").write_text(r["prompt"])
    shards = pack(src, str(root / "shards"), shard_size=4)
    return root, shards, sum(s["samples"] for s in shards)


def _overrides(root: Path, out: Path, timeout_s: float = 20) -> list[str]:
    return [f"input.shards={root}/shards/shard-*.tar", "input.storage.endpoint_url=null", f"engine.kind={FIXED}",
            f"output.path={out}", "engine.resources={scorer: 1}", "engine.num_cpus=0.5", "engine.batch_size=4",
            "decode.actors=2", "decode.num_cpus=1", "decode.batch_size=2", "output.min_rows_per_file=8",
            "ray.progress_bars=false", "ray.object_store_memory=null", f"ray.capacity_timeout_s={timeout_s}"]


def _submit(cluster: Cluster, overrides: list[str], log_path: Path) -> subprocess.Popen:
    logf = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "submit", "configs/local.yaml", *overrides,
                             "--address", cluster.address, "--working-dir", str(REPO)],
                            cwd=REPO, env=cluster.env, stdout=logf, stderr=subprocess.STDOUT, text=True)


def _commits(out: Path) -> int:
    """Rows committed so far: the run's compact checkpoint plus the commit markers it has not folded yet."""
    total, folded = 0, set()
    for ck in (out / "_vscore" / "state").glob("*.json"):
        try:
            state = json.loads(ck.read_text())
        except ValueError:
            continue
        total += state.get("totals", {}).get("rows", 0)
        folded |= set(state.get("digests", []))
    for marker in (out / "_vscore" / "commits").glob("*/*.json"):
        try:
            m = json.loads(marker.read_text())
        except (ValueError, FileNotFoundError):  # folded and deleted while we looked
            continue
        if m["digest"] not in folded:
            total += sum(len(ids) for ids in m["rows_by_shard"].values())
    return total


def _wait_rows(proc: subprocess.Popen, out: Path, n: int, log_path: Path, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while _commits(out) < n:
        if proc.poll() is not None:
            pytest.fail(f"job ended before {n} rows were committed:\n{log_path.read_text()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"fewer than {n} rows committed after {timeout} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)


def _submit_then_kill_worker(cluster: Cluster, overrides: list[str], out: Path, log_path: Path,
                             rows: int = 16) -> tuple[subprocess.Popen, float, int]:
    """Submit the job, wait for `rows` committed rows, kill -9 the worker node: (proc, killed_at, rows at kill)."""
    proc = _submit(cluster, overrides, log_path)
    _wait_rows(proc, out, rows, log_path)
    assert cluster.run_actors_off_the_head() == {}  # what the driver depends on lives on its node, not the one lost
    killed_at = cluster.kill_worker()
    return proc, killed_at, _commits(out)


def _assert_exactly_once(out: Path, shards: list[dict], n: int) -> None:
    from pipeline.schema import make_row_id

    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    ids = [r["row_id"] for r in rows]
    assert len(rows) == n and len(set(ids)) == n, (len(rows), len(set(ids)), n)
    assert {r["shard"] for r in rows} == {s["url"] for s in shards}
    for r in rows:  # exactly what a fault-free run gives with the fixed engine
        assert r["row_id"] == make_row_id(r["shard"], r["key"])
        assert (r["status"], r["parse_mode"], r["visual_quality"], r["text_alignment"], r["physical_consistency"]) == \
            ("ok", "strict", 3, 3, 3), r
    summary = json.loads(next((out / "_vscore").glob("summary-*.json")).read_text())
    assert summary["rows_out"] == summary["rows_in"] == summary["ok"] == n


def _record(name: str, text: str) -> None:
    print(f"[{name}] {text}")
    with open(REPO / "tmp" / "cluster-faults.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {name}: {text}\n")


def _rerun_completes(cluster: Cluster, root: Path, out: Path, shards, n: int, committed: int, log_path: Path) -> float:
    """Submit the same job again: it must succeed, resume exactly the `committed` rows and leave every row exactly
    once and ok. Returns its wall seconds."""
    t1 = time.time()
    proc = _submit(cluster, _overrides(root, out), log_path)
    assert proc.wait(timeout=600) == 0, log_path.read_text()[-4000:]
    rerun = time.time() - t1
    _assert_exactly_once(out, shards, n)
    summary = json.loads(next((out / "_vscore").glob("summary-*.json")).read_text())
    assert summary["rows_resumed"] == committed
    return rerun


@pytest.mark.slow
@pytest.mark.heavy
def test_worker_node_lost_mid_run_stops_with_one_line_then_rerun_completes(cluster, many_shards, tmp_path):
    root, shards, n = many_shards
    out = tmp_path / "scores"
    log1 = tmp_path / "submit1.log"
    t0 = time.time()
    proc, killed_at, at_kill = _submit_then_kill_worker(cluster, _overrides(root, out), out, log1)
    code = proc.wait(timeout=300)
    stopped_after = time.time() - killed_at
    text = log1.read_text()
    assert code == 1, text[-4000:]  # the job FAILED (its driver exited 2 with the one line below)
    lines = [ln for ln in text.splitlines() if ln.startswith("vscore score: run ")]
    assert len(set(lines)) == 1 and "no node can host a scoring actor" in lines[0], text[-4000:]  # (Ray repeats the last log lines in the status)
    assert "missing scorer" in lines[0] and "rerun the same command to resume" in lines[0] and not lines[0].endswith("...")
    # the driver ended with that line (exit 2 of a UsageError), not with an uncaught Ray exception (exit 1)
    assert "driver exit code 2" in text, text[-4000:]
    _record("node-lost", f"the one line: {lines[0]}")
    committed = _commits(out)
    assert committed < n
    # the node comes back (the preempted GPU node replaced); the same job again resumes and completes
    cluster.start_worker()
    rerun = _rerun_completes(cluster, root, out, shards, n, committed, tmp_path / "submit2.log")
    _record("node-lost", f"{n} samples; killed the worker node at {at_kill} committed rows ({killed_at - t0:.0f} s in); "
            f"the job failed with one line {stopped_after:.0f} s after the kill ({committed} rows committed); rerun with the "
            f"node back: {rerun:.0f} s, {n - committed} rows scored, {n} rows exactly once, all ok")


@pytest.mark.slow
@pytest.mark.heavy
def test_driver_killed_then_same_job_resubmitted(cluster, many_shards, tmp_path):
    root, shards, n = many_shards
    if cluster.scorer_nodes() < 1:
        cluster.start_worker()
    out = tmp_path / "scores-retry"
    log1 = tmp_path / "submit1.log"
    t0 = time.time()
    proc = _submit(cluster, _overrides(root, out), log1)
    _wait_rows(proc, out, 16, log1)
    pids = cluster.driver_pids(str(out))
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.time()
    at_kill = _commits(out)
    assert proc.wait(timeout=300) == 1, log1.read_text()[-3000:]  # the first attempt FAILED
    committed = _commits(out)
    # what KubeRay's backoffLimit does: the same job submitted again
    rerun = _rerun_completes(cluster, root, out, shards, n, committed, tmp_path / "submit2.log")
    assert not (out / "_vscore" / "inflight").exists() or not any((out / "_vscore" / "inflight").rglob("*.json"))
    _record("driver-killed", f"{n} samples; killed the job driver at {at_kill} committed rows ({killed_at - t0:.0f} s in); "
            f"{committed} committed when the job ended FAILED; resubmitted: {rerun:.0f} s, {n - committed} rows scored, "
            f"{n} rows exactly once, all ok")


def test_capacity_watchdog_interrupts_the_run(monkeypatch):
    """When Ray keeps waiting for a lost node (no error), the driver's watchdog stops the run after
    `ray.capacity_timeout_s` with the reason recorded (here: the only `scorer` node is gone)."""
    import threading

    from pipeline.run import job
    from pipeline.run.plan import make_plan

    cfg = _cfg(**{"engine.resources": "{scorer: 1}", "ray.capacity_timeout_s": 1})
    plan = make_plan(cfg, {"CPU": 2.0})
    monkeypatch.setattr(job, "alive_node_resources", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(job._CapacityWatchdog, "POLL_S", 0.1)
    lost: list[str] = []
    t0 = time.time()
    with pytest.raises(job._CapacityLost):
        with job._CapacityWatchdog(cfg, plan, threading.Event(), lost).armed():
            for _ in range(100):  # the run's blocking wait
                time.sleep(0.1)
    assert 1 <= time.time() - t0 < 5
    assert lost and lost[0].startswith("for 1 s no node can host a scoring actor") and "missing scorer" in lost[0]
