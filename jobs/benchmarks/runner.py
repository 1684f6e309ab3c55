"""What the pipeline and memory sections share: the benchmarked configuration, sample packing, and the
`Runner` (the decode-alone process pool and the Ray session) with its row watcher."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .procs import Poller, ProcSampler


BENCH_ENGINE = "pipeline.engines.fixed:FixedOutputEngine"  # benchmark-only zero-cost engine
QUICK_PIPELINE_N = (24, 120)  # samples of the small and the large run
FULL_PIPELINE_N = (64, 320)


def pack_samples(work: Path, name: str, clips: list[Path], n: int, shard_size: int) -> str:
    """n samples cycling over `clips`, packed into local WebDataset shards; returns the shard glob."""
    from pipeline.tools.pack import pack

    dest = work / "shards" / f"{name}-{n}"
    done = dest / "_done"
    if not done.exists():
        shutil.rmtree(dest, ignore_errors=True)
        src = work / "src" / f"{name}-{n}"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        with open(src / "manifest.jsonl", "w") as f:
            for i in range(n):
                c = clips[i % len(clips)]
                f.write(json.dumps({"file": os.path.relpath(c, src), "prompt": f"benchmark clip {i}: {c.stem}"}) + "\n")
        pack(src, str(dest), shard_size=shard_size)
        done.write_text("ok")
    return str(dest / "shard-*.tar")


def pipeline_config(shards: str, out: str, overrides: list[str]):
    """The benchmarked configuration: 2 CPUs, FixedOutputEngine, local shards and output, no progress
    bars. `overrides` are `dotted.key=value` strings (see --pipeline-set)."""
    from pipeline.config import load_config

    base = {
        "input": {"shards": shards},
        "decode": {"actors": 2, "num_cpus": 0.8, "threads": 1},
        "engine": {"kind": BENCH_ENGINE, "actors": 1, "num_gpus": 0, "num_cpus": 0.1, "batch_size": 16, "batches_in_flight": 1},
        "output": {"path": out},
        "ray": {"num_cpus": 2, "progress_bars": False},
    }
    return load_config(None, overrides, base=base)


_POOL_DATA: list[bytes] = []


def _pool_decode(i: int) -> int:
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video

    return int(decode_video(_POOL_DATA[i], DecodeConfig(threads=1)).frames.shape[0])


def _first_commit_s(out: str, t_start: float) -> float | None:
    ms = [p.stat().st_mtime for p in Path(out).glob("_vscore/commits/*/*.json")]
    return min(ms) - t_start if ms else None


class RowsWatcher(Poller):
    """Polls the run's stats actor (`vscore-stats-*`, rows_scored) every 0.25 s: the time to the first
    scored row (job start-up: plan, actors, first decode batch) and the in-run rate between 25% and 90%
    of the rows (steady state, a second estimate next to the large-minus-small difference)."""

    join_timeout = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.series: list[tuple[float, float]] = []
        self._handle = None

    def poll(self) -> None:
        import ray

        try:
            if self._handle is None:
                names = [a["name"] if isinstance(a, dict) else a for a in ray.util.list_named_actors()]
                name = next((x for x in names if str(x).startswith("vscore-stats-")), None)
                if name is None:
                    return
                self._handle = ray.get_actor(name)
            snap = ray.get(self._handle.snapshot.remote(), timeout=5)
            self.series.append((time.time(), float(snap.get("rows_scored", 0))))
        except Exception:  # noqa: BLE001 - the actor is killed at the end of the run
            self._handle = None

    def summary(self, t0: float, n: int) -> dict[str, Any]:
        def first_at(rows: float) -> float | None:
            return next((t for t, r in self.series if r >= rows), None)

        out: dict[str, Any] = {"first_row_s": None, "inrun_vps": None, "window": None}
        t1 = first_at(1)
        if t1 is not None:
            out["first_row_s"] = t1 - t0
        a, b = first_at(0.25 * n), first_at(0.9 * n)
        if a is not None and b is not None and b > a:
            ra = next(r for t, r in self.series if t == a)
            rb = next(r for t, r in self.series if t == b)
            out["inrun_vps"] = (rb - ra) / (b - a)
            out["window"] = (a, b, rb - ra)
        return out


class Runner:
    """Owns the decode-alone pool (forked before Ray starts) and the Ray session."""

    def __init__(self, work: Path, overrides: list[str]) -> None:
        self.work = work
        self.overrides = overrides
        self.pool = None
        self.ray_init_s: float | None = None
        self.k = 0

    def start_pool(self, datas: list[bytes]) -> None:
        import multiprocessing as mp

        _POOL_DATA[:] = datas
        self.pool = mp.get_context("fork").Pool(2)
        self.pool.map(_pool_decode, [0, min(1, len(datas) - 1)])  # warm (imports)

    def decode_alone(self, n: int) -> dict[str, Any]:
        with ProcSampler() as s:
            t = time.perf_counter()
            self.pool.map(_pool_decode, range(n), chunksize=1)
            wall = time.perf_counter() - t
        return {"n": n, "wall_s": wall, "vps": n / wall, "cpu": s.cpu}

    def init_ray(self, shards: str) -> None:
        import ray

        from pipeline.run.job import init_ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        t = time.perf_counter()
        init_ray(pipeline_config(shards, str(self.work / "out" / "init"), self.overrides))
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.ray_init_s = time.perf_counter() - t

    def run(self, shards: str, n: int, tag: str, extra: list[str] | None = None, memory: bool = False) -> dict[str, Any]:
        from pipeline.run.job import run

        self.k += 1
        out = self.work / "out" / f"{tag}-{os.getpid()}-{self.k}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = pipeline_config(shards, str(out), self.overrides + list(extra or []))
        watch = RowsWatcher()
        with (ProcSampler(every=0.25, pss_every=4) if memory else ProcSampler()) as s, watch:
            t0w = time.time()
            t = time.perf_counter()
            summary = run(cfg, progress_every_s=3600)
            wall = time.perf_counter() - t
        s.exclude_from_driver(watch.self_cpu)
        first = _first_commit_s(str(out), t0w)
        if summary.get("rows_out") != n or summary.get("errors"):
            raise RuntimeError(f"pipeline run lost rows or had errors: {summary}")
        shutil.rmtree(out, ignore_errors=True)
        w = watch.summary(t0w, n)
        win = w.pop("window")
        cpu_win = {k: v / win[2] for k, v in s.window(win[0], win[1]).items()} if win and win[2] else {}
        return {"n": n, "wall_s": wall, "vps": n / wall, "first_commit_s": first, "cpu": s.cpu, "peak": s.peak,
                "peak_rss_by_kind_mib": {k: round(v / 2**20) for k, v in sorted(s.peak_by_kind.items(), key=lambda x: -x[1])},
                "cpu_per_video_window": cpu_win, **w}

    def restart_ray(self, shards: str) -> None:
        """A fresh Ray session (for variants that change what `init_ray` starts Ray with)."""
        import ray

        ray.shutdown()
        self.init_ray(shards)

    def close(self) -> None:
        import ray

        if self.pool is not None:
            self.pool.terminate()
        if ray.is_initialized():
            ray.shutdown()
