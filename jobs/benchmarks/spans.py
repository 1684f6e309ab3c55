"""Mode `spans` (`--spans`): decoding a 2 s clip span of a 60 s 720p H.264 source (x264 defaults: GOP 250,
B-frames) by keyframe seek (`pipeline.video.seek.decode_span`) vs decoding the whole source
(`decode_video`, what scoring the uncut source costs) and vs the span without seeking (sequential decode from
frame 0 to the span's last frame, what a reader without seek pays). CPU seconds in this process, one decoder
thread, median over reps, at several span positions (the cost depends on where the span falls in its GOP).
Target (issue 11): the span >= 5x faster than the whole source."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import fmt, load1, median

NAME = "spans"
SUMMARY = "--spans: a 2 s span of a 60 s 720p H.264 source by keyframe seek vs decoding the whole source"
SOURCE = (1280, 720, 24.0, 60.0)  # width, height, fps, seconds
SPAN_S = 2.0
STARTS = (5.0, 20.0, 30.0, 41.0, 50.0)  # span starts (s): different offsets into x264's 10.4 s GOPs
TARGET = 5.0


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--spans", action="store_true", help="run the clip-span seek benchmark instead")
    group.add_argument("--span-reps", type=int, default=None, help="reps per measurement (default 3 quick / 5 full)")


def selected(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "spans", False))


def _source(work: Path) -> Path:
    from .clips import encode_clip

    w, h, fps, secs = SOURCE
    d = work / "clips"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"span-source-{w}x{h}-{fps:g}fps-{secs:g}s-crf23-veryfast.mp4"
    if not p.exists():
        t = time.time()
        data = encode_clip(w, h, fps, secs, seed=7, preset="veryfast")
        p.with_suffix(".tmp").write_bytes(data)
        p.with_suffix(".tmp").rename(p)
        print(f"[bench] generated {p.name} ({len(data) // 1024} KiB) in {time.time() - t:.1f}s", flush=True)
    return p


def _cpu(fn, reps: int) -> tuple[float, float]:
    """(median CPU-s, median wall-s) of fn() over reps (one warm-up call first)."""
    fn()
    cpu, wall = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return median(cpu), median(wall)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import _Deadline, _decode_pass, decode_video, probe_video
    from pipeline.video.seek import _seek_pass, decode_span
    from pipeline.vs2.frames import span_indices

    reps = args.span_reps or (3 if args.quick else 5)
    path = _source(work)
    load_start = load1()
    data = path.read_bytes()
    cfg = DecodeConfig(threads=1)
    cfg_skip = DecodeConfig(threads=1, skip_nonref=True)  # the opt-in: non-reference frames before the span skipped too
    p = probe_video(data, cfg)
    whole_cpu, whole_wall = _cpu(lambda: decode_video(data, cfg), reps)
    spans = []
    for start in STARTS:
        end = start + SPAN_S
        idx = span_indices(p["total_frames"], p["fps"], start, end, cfg)
        assert _seek_pass(data, 0, p["total_frames"], idx, cfg, _Deadline(600)) is not None, "seek refused"
        seek_cpu, seek_wall = _cpu(lambda: decode_span(data, cfg, start, end), reps)
        seq_cpu, _ = _cpu(lambda: _decode_pass(data, 0, idx, cfg, _Deadline(600)), reps)
        skip_cpu, _ = _cpu(lambda: decode_span(data, cfg_skip, start, end), reps)
        spans.append({"start_s": start, "end_s": end, "kept": len(idx), "seek_cpu_s": seek_cpu, "seek_wall_s": seek_wall,
                      "sequential_cpu_s": seq_cpu, "speedup_vs_whole": whole_cpu / seek_cpu,
                      "speedup_vs_sequential": seq_cpu / seek_cpu, "seek_skip_nonref_cpu_s": skip_cpu,
                      "speedup_skip_nonref_vs_whole": whole_cpu / skip_cpu})
    return {"spans": {"load": {"load_at_start": load_start, "load_at_end": load1()}, "source": path.name, "bytes": len(data), "frames": p["total_frames"], "fps": p["fps"], "reps": reps,
                      "whole_cpu_s": whole_cpu, "whole_wall_s": whole_wall, "spans": spans,
                      "min_speedup": min(s["speedup_vs_whole"] for s in spans),
                      "median_speedup": median([s["speedup_vs_whole"] for s in spans])}}


def report(res: dict[str, Any]) -> list[str]:
    r = res.get("spans")
    if not r:
        return []
    lines = ["", f"Clip span seek: {r['source']} ({r['frames']} frames at {r['fps']:.3g} fps, {r['bytes'] // 1024} KiB), 1 decoder "
             f"thread, CPU-s medians of {r['reps']} reps. Whole source (`decode_video`): **{fmt(r['whole_cpu_s'], 3)} CPU-s**.", "",
             "| span (s) | frames kept | seek (CPU-s) | no seek: frame 0 to span end (CPU-s) | speed-up vs whole source (target >= 5x) | vs no seek "
             "| seek with `decode.skip_nonref` (CPU-s) | its speed-up vs whole |",
             "|---|---|---|---|---|---|---|---|"]
    for s in r["spans"]:
        lines.append(f"| {s['start_s']:g}-{s['end_s']:g} | {s['kept']} | {fmt(s['seek_cpu_s'], 3)} | {fmt(s['sequential_cpu_s'], 3)} | "
                     f"**{fmt(s['speedup_vs_whole'], 1)}x** | {fmt(s['speedup_vs_sequential'], 1)}x | "
                     f"{fmt(s['seek_skip_nonref_cpu_s'], 3)} | {fmt(s['speedup_skip_nonref_vs_whole'], 1)}x |")
    met = "met" if r["min_speedup"] >= TARGET else "NOT met"
    lines.append(f"- speed-up vs the whole source: min {fmt(r['min_speedup'], 1)}x, median {fmt(r['median_speedup'], 1)}x: target {met}")
    return lines
