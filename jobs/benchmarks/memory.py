"""Section `memory`: peak RSS (and PSS) of the driver and of all Ray processes at two sizes of tiny
synthetic clips (quick: 200/1000, full: 1000/10000): flat = streaming."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .clips import tiny_clips
from .common import fmt, load1, wait_quiet
from .runner import Runner, pack_samples


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


def report(m: dict[str, Any]) -> list[str]:
    """The memory table (results key `memory`)."""
    lines: list[str] = []
    lines += ["", "Memory, tiny synthetic clips (160x120, 2 s), FixedOutputEngine, peaks over the run (MiB)", "",
              "| samples | videos/s | driver RSS | Ray processes RSS (sum) | Ray processes private (RSS - shared) | largest Ray process RSS | PSS sum (all, shared pages once) |",
              "|---|---|---|---|---|---|---|"]
    for n, r in m["runs"].items():
        lines.append(f"| {n} | {fmt(r['vps'], 1)} | {r['driver_rss']:.0f} | {r['others_rss_sum']:.0f} | {r.get('others_private_sum', 0):.0f} | "
                     f"{r['others_rss_max1']:.0f} | {r['pss_sum']:.0f} |")
    lines.append("")
    for n, r in m["runs"].items():
        kinds = r.get("rss_by_kind_at_peak_mib", {})
        lines.append(f"- {n} samples, RSS (private = RSS - shared pages) by process kind at the peak, MiB: " + ", ".join(
            f"{k} {v} ({kinds.get(k + ' private', 0)})" for k, v in kinds.items() if not k.endswith(" private")))
    return lines
