"""Mode `cpu` (the default): the CPU sections `decode`, `pipeline` and `memory` (`--sections`). The
pipeline and memory sections share one `Runner`: the decode-alone pool is forked before Ray starts,
then one Ray session serves both."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import decode, memory, overhead
from .clips import generated_clips, real_clips
from .runner import FULL_PIPELINE_N, QUICK_PIPELINE_N, Runner, pack_samples

NAME = "cpu"
SUMMARY = "the default: sections decode, pipeline, memory (--sections), each a ratio measured side by side"
DEFAULT = True
SECTIONS = {"decode": decode.report, "pipeline": overhead.report, "memory": memory.report}  # results key -> its table


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--sections", default="decode,pipeline,memory", help="comma list of decode,pipeline,memory")
    group.add_argument("--reps", type=int, default=None, help="decode reps (default 3 quick / 5 full)")
    group.add_argument("--pipeline-reps", type=int, default=None, help="pipeline reps (default 1 quick / 3 full)")
    group.add_argument("--pipeline-set", action="append", default=[], metavar="KEY=VALUE",
                       help="override of the benchmarked pipeline config (dotted.key=value), repeatable")
    group.add_argument("--memory-sizes", default=None, help="sample counts of the memory runs (default 200,1000 quick / 1000,10000)")
    group.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V",
                       help="pipeline variant measured side by side (config overrides, job.CONST=..., ctx.FIELD=...), repeatable")


def selected(args: argparse.Namespace) -> bool:
    return True  # the default mode: runs when no other mode's flag is given


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "decode" in sections:
        res["decode"] = decode.bench_decode(args, work)
    if "pipeline" in sections or "memory" in sections:
        runner = Runner(work, args.pipeline_set)
        try:
            reals, _ = real_clips()
            clips = reals or generated_clips(work, 854, 480, 4)
            n_large = (QUICK_PIPELINE_N if args.quick else FULL_PIPELINE_N)[1]
            runner.start_pool([clips[i % len(clips)].read_bytes() for i in range(n_large)])
            runner.init_ray(pack_samples(work, "real", clips, 32 if args.quick else 64, 16))
            if "pipeline" in sections:
                res["pipeline"] = overhead.bench_pipeline(args, work, runner)
            if "memory" in sections:
                res["memory"] = memory.bench_memory(args, work, runner)
        finally:
            runner.close()
    return res


def report(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, table in SECTIONS.items():
        if res.get(key):
            lines += table(res[key])
    return lines
