"""`vscore score CONFIG [dotted.key=value ...]`: the main job."""

from __future__ import annotations

import argparse
import json


def run(a: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(a.config, a.overrides)  # a bad config fails here, before Ray is imported
    from pipeline.run.job import run as run_job

    summary = run_job(cfg, progress_every_s=a.progress_every, retry_errors=a.retry_errors)
    print(json.dumps(summary, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("score", help="run the scoring job described by a YAML config")
    sp.add_argument("config", help="YAML run config (see configs/ and pipeline/config.py)")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. engine.kind=vllm")
    sp.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress log lines")
    sp.add_argument("--retry-errors", action="store_true", help="score again the rows of this (finished) run whose status is "
                    "error in a retryable stage (read, decode, engine), replacing them exactly once in output and quarantine")
    sp.set_defaults(fn=run)
