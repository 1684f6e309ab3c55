"""Section `decode`: videos per CPU-second on one core, vscore `decode_video` vs the ffmpeg CLI vs
qwen-vl-utils `fetch_video` (decord) vs PyAV decode-all, in a child process pinned to one core (the
entry point re-run with `--_decode-child SPEC OUT`)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .clips import clip_info, generated_clips, real_clips
from .common import ENTRY, ROOT, fmt, load1, median, wait_quiet


_FF_BENCH = re.compile(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s")


def _m_ffmpeg(path: str) -> tuple[float, float]:
    """(cpu_s, wall_s) of ffmpeg's decode loop (-benchmark), decoder on 1 thread, null output."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-benchmark", "-threads", "1", "-i", path,
                        "-map", "0:v:0", "-f", "null", "-"], capture_output=True, text=True)
    m = _FF_BENCH.search(r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"ffmpeg failed on {path}: {r.stderr[-300:]}")
    return float(m.group(1)) + float(m.group(2)), float(m.group(3))


def decode_child(spec_path: str, out_path: str) -> None:
    """Runs under `taskset -c 0`: every method on every clip, methods rotated per rep, per-clip medians."""
    os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    import av
    import numpy as np  # noqa: F401

    spec = json.loads(Path(spec_path).read_text())
    methods: list[str] = spec["methods"]
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video
    from pipeline.video.signals import compute_signals

    cfg = DecodeConfig(threads=1, skip_nonref=False)  # "vscore": the full decode (the default before issue 15)
    cfg_skip = DecodeConfig(threads=1, skip_nonref=True)  # "vscore_skip": decode.skip_nonref, the default since issue 15
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
        if method == "signals":  # the cheap signals alone, on frames decoded outside the timing
            frames = decode_video(data, cfg).frames
            c0, w0 = time.process_time(), time.perf_counter()
            compute_signals(frames)
            return time.process_time() - c0, time.perf_counter() - w0
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
    """Writes the spec (clip sets, methods, reps), runs `decode_child` pinned to one core, adds the clips' details."""
    reals, real_dir = real_clips()
    n480, n720 = (2, 2) if args.quick else (6, 4)
    sets = {}
    if reals:
        sets["real"] = [str(p) for p in reals]
    sets["gen-480p"] = [str(p) for p in generated_clips(work, 854, 480, n480)]
    sets["gen-720p"] = [str(p) for p in generated_clips(work, 1280, 720, n720)]
    methods = ["vscore", "vscore_skip", "signals", "ffmpeg", "qwen", "pyav_all"] + ([] if args.quick else ["nonref"])
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
    cmd = [sys.executable, str(ENTRY), "--_decode-child", str(spec), str(out)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] + cmd
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(out.read_text())
    info = {name: [clip_info(Path(p)) for p in paths] for name, paths in sets.items()}
    return {"sets": res, "methods": methods, "floor": floor, "reps": reps, "real_dir": real_dir, "clips": info,
            "wall_s": round(time.time() - t0, 1), "load": {**load, "load_at_end": round(load1(), 2)}}


def report(d: dict[str, Any]) -> list[str]:
    """The decode ratio table (results key `decode`)."""
    lines: list[str] = []
    floor = d["floor"]
    fl = "ffmpeg -threads 1" if floor == "ffmpeg" else "PyAV decode-all (no ffmpeg CLI)"
    lines += ["", f"Decode, videos per CPU-second on one core ({d['reps']} reps, per-clip medians; wall on the pinned core in brackets)", "",
              f"| clip set | clips | vscore decode_video (full decode) | {fl} | qwen-vl-utils fetch_video (decord) | PyAV decode-all | vscore / floor | vscore / qwen-vl-utils |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in d["sets"].items():
        v = s["vscore"]
        f = s.get(floor)
        q = s.get("qwen")
        pa_ = s.get("pyav_all")
        lines.append(
            f"| {name} | {v['clips']} | {fmt(v['vps_cpu'])} ({fmt(v['vps_wall'])}) | {fmt(f['vps_cpu']) if f else 'n/a'} ({fmt(f['vps_wall']) if f else 'n/a'}) | "
            f"{fmt(q['vps_cpu']) if q else 'n/a'} ({fmt(q['vps_wall']) if q else 'n/a'}) | {fmt(pa_['vps_cpu']) if pa_ else 'n/a'} | "
            f"**{fmt(v['vps_cpu'] / f['vps_cpu']) if f else 'n/a'}x** (target >= 0.8) | **{fmt(v['vps_cpu'] / q['vps_cpu']) if q else 'n/a'}x** (target >= 2) |")
    if any("vscore_skip" in s for s in d["sets"].values()):
        lines += ["", "decode.skip_nonref=true (the default since issue 15; frame-exact, byte-identical frames) vs the full decode: " + ", ".join(
            f"{n} {s['vscore_skip']['vps_cpu']:.2f}/s = **{s['vscore_skip']['vps_cpu'] / s['vscore']['vps_cpu']:.2f}x** vscore full decode"
            + (f", {s['vscore_skip']['vps_cpu'] / s[floor]['vps_cpu']:.2f}x floor" if floor in s else "")
            for n, s in d["sets"].items() if "vscore_skip" in s)]
    if any("signals" in s for s in d["sets"].values()):
        lines += ["", "signals (pipeline/video/signals.py: motion, flicker, blank_fraction, sharpness, phash) on the decoded frames, "
                  "CPU per clip vs vscore decode_video: " + ", ".join(
                      f"{n} {1000 * s['signals']['cpu_s'] / s['signals']['clips']:.1f} ms = **{100 * s['signals']['cpu_s'] / s['vscore']['cpu_s']:.1f}%**"
                      for n, s in d["sets"].items() if "signals" in s) + " (target <= 5%)"]
    if any("nonref" in s for s in d["sets"].values()):
        lines += ["", "skip_frame=NONREF decode-all (not frame-exact, informational): " + ", ".join(
            f"{n} {s['nonref']['vps_cpu']:.2f}/s = {s['nonref']['vps_cpu'] / s['pyav_all']['vps_cpu']:.2f}x decode-all" for n, s in d["sets"].items() if "nonref" in s)]
    return lines
