"""`vscore tiny-model DIR`: the tiny random offline Qwen2.5-VL used by tests and the demo."""

from __future__ import annotations

import argparse


def run(a: argparse.Namespace) -> int:
    from pipeline.dev.tiny_model import build_tiny_model

    print(build_tiny_model(a.dir, seed=a.seed))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("tiny-model", help="build the tiny random offline Qwen2.5-VL used by tests and the demo")
    sp.add_argument("dir")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=run)
