"""Process sampling under the driver: CPU-seconds by process kind, RSS/PSS peaks (psutil), and the
periodic-poll thread base the pipeline runs' watchers share."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def _kind(title: str) -> str:
    if title == "driver":
        return "driver"
    if title.startswith("ray::"):
        t = title.split()[0][5:]
        if "DecodeStage" in t:
            return "decode actors"
        if "ScoreStage" in t or "FakeScore" in t:
            return "score actor"
        if "read_shards" in t:
            return "read tasks"
        if t.startswith("Write"):
            return "write tasks"
        if t == "stage":  # pipeline.run.rewrite.stage: compaction's reading and writing, as a Ray task
            return "compaction task"
        if t == "IDLE":
            return "idle/starting workers"
        if any(k in t for k in ("_StatsActor", "_AutoscalingCoordinator", "ActorLocationTracker")):
            return "Ray Data system actors"
        if "RunStats" in t:
            return "vscore stats actor"
        if "DashboardAgent" in t or "RuntimeEnvAgent" in t:
            return "Ray system"
        return "Ray other"
    if "EmbeddedS3" in title:  # the scale benchmark's moto server (a child process): the storage service
        return "moto S3 (bench)"
    if "multiprocessing" in title or "bench.py" in title:
        return "decode-alone pool"
    return "Ray system"  # raylet, gcs_server, dashboard/log_monitor/monitor python processes


def _system_name(title: str) -> str:
    """Which of Ray's own processes (kind "Ray system") this is: raylet, gcs_server, or the Python script /
    agent name (log_monitor.py, monitor.py, dashboard agent, ...), so that growth can be pinned on one."""
    words = title.split()
    if title.startswith("ray::"):
        return words[0][5:]
    for w in words:
        base = w.rsplit("/", 1)[-1]
        if base in ("raylet", "gcs_server") or base.endswith(".py"):
            return base
    return words[0].rsplit("/", 1)[-1] if words else "?"


_NOT_RAY = ("decode-alone pool", "moto S3 (bench)")  # sampled for CPU, left out of the Ray memory sums


class Poller:
    """A daemon thread calling `poll()` every `every` seconds between `__enter__` and `__exit__`. Its own
    CPU time at the end (`self_cpu`) is benchmark bookkeeping, kept apart from the driver's."""

    every = 0.25
    join_timeout: float | None = None

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.self_cpu = 0.0

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()
        self.self_cpu = time.thread_time()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.join_timeout)


class ProcSampler(Poller):
    """Samples the process tree under the driver: CPU seconds by kind (deltas between samples, so
    processes that exit lose at most one interval), peak RSS of the driver and of everything else, and
    (every `pss_every` samples, if set) the PSS sum, which counts shared object-store pages once."""

    def __init__(self, every: float = 0.5, pss_every: int = 0) -> None:
        import psutil

        super().__init__()
        self.psutil = psutil
        self.root = psutil.Process(os.getpid())
        self.every, self.pss_every = every, pss_every
        self.last: dict[int, tuple[float, float]] = {}
        self.cpu: dict[str, float] = {}
        self.peak = {"driver_rss": 0, "others_rss_sum": 0, "others_rss_max1": 0, "pss_sum": 0, "driver_pss": 0}
        self._n = 0
        self.series: list[tuple[float, dict[str, float]]] = []  # (time, cumulative CPU-s by kind)
        self.peak_by_kind: dict[str, int] = {}
        self.current: dict[str, Any] = {}  # the latest sample's values (bytes), for series (the soak)

    def sample(self, count: bool = True) -> None:
        ps = self.psutil
        procs = [self.root] + self.root.children(recursive=True)
        rss_sum = rss_max = 0
        pss_sum = 0
        driver_now = (0, 0, 0)
        by_kind: dict[str, int] = {}
        system: dict[str, int] = {}  # private bytes of Ray's own processes by name (`_system_name`)
        # PSS reads /proc/PID/smaps_rollup, which walks every mapping (the object store is mapped in every
        # worker): ~0.2 core on 2 cores at 1 Hz, so only the memory runs ask for it
        do_pss = bool(self.pss_every) and self._n % self.pss_every == 0
        self._n += 1
        for p in procs:
            try:
                ct = p.cpu_times()
                c = ct.user + ct.system
                title = "driver" if p.pid == self.root.pid else (" ".join(p.cmdline()) or p.name())
                mem = p.memory_info()
                pss = p.memory_full_info().pss if do_pss else 0
            except (ps.Error, OSError):
                continue
            k = _kind(title)
            prev = self.last.get(p.pid)
            if count and prev is not None:
                self.cpu[k] = self.cpu.get(k, 0.0) + max(0.0, c - prev[0])
                self.cpu[k + " (sys)"] = self.cpu.get(k + " (sys)", 0.0) + max(0.0, ct.system - prev[1])
            self.last[p.pid] = (c, ct.system)
            private_b = mem.rss - getattr(mem, "shared", 0)  # RSS minus the pages shared with other processes
            if k == "driver":
                driver_now = (mem.rss, pss, private_b)
                self.peak["driver_rss"] = max(self.peak["driver_rss"], mem.rss)
                self.peak["driver_pss"] = max(self.peak["driver_pss"], pss)
            elif k not in _NOT_RAY:
                rss_sum += mem.rss
                rss_max = max(rss_max, mem.rss)
                by_kind[k] = by_kind.get(k, 0) + mem.rss
                by_kind[k + " private"] = by_kind.get(k + " private", 0) + private_b
                if k == "Ray system":
                    name = _system_name(title)
                    system[name] = system.get(name, 0) + private_b
            if k not in _NOT_RAY:
                pss_sum += pss
        if count and threading.current_thread() is self._thread:
            cum = dict(self.cpu)
            cum["_sampler"] = time.thread_time()  # this thread's own CPU, taken out of the driver's in window()
            self.series.append((time.time(), cum))
        private = sum(v for kk, v in by_kind.items() if kk.endswith(" private"))
        self.current = {"driver_rss": driver_now[0], "driver_pss": driver_now[1], "driver_private": driver_now[2], "others_rss_sum": rss_sum,
                        "others_private_sum": private, "pss_sum": pss_sum if do_pss else None, "by_kind": by_kind,
                        "system_private": system}
        self.peak["others_private_sum"] = max(self.peak.get("others_private_sum", 0), private)
        if rss_sum > self.peak["others_rss_sum"]:
            self.peak_by_kind = by_kind  # the breakdown at the moment of the peak sum
        self.peak["others_rss_sum"] = max(self.peak["others_rss_sum"], rss_sum)
        self.peak["others_rss_max1"] = max(self.peak["others_rss_max1"], rss_max)
        self.peak["pss_sum"] = max(self.peak["pss_sum"], pss_sum)

    poll = sample

    def __enter__(self) -> "ProcSampler":
        self.sample(count=False)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.sample()
        self.exclude_from_driver(self.self_cpu)  # the sampling thread's own CPU is not the driver's

    def window(self, t0: float, t1: float) -> dict[str, float]:
        """CPU-seconds by kind spent between t0 and t1 (nearest samples), the sampler's own CPU taken out of
        the driver's (the rows watcher's polling, a few ms per second, stays in)."""
        if not self.series:
            return {}
        a = min(self.series, key=lambda x: abs(x[0] - t0))[1]
        b = min(self.series, key=lambda x: abs(x[0] - t1))[1]
        out = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}
        own = out.pop("_sampler", 0.0)
        if "driver" in out:
            out["driver"] = max(0.0, out["driver"] - own)
        return out

    def exclude_from_driver(self, cpu_s: float) -> None:
        """The bench's own threads run in the driver process: their CPU is not the pipeline's."""
        if "driver" in self.cpu:
            self.cpu["driver"] = max(0.0, self.cpu["driver"] - cpu_s)
