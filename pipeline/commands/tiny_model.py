"""`vscore tiny-model DIR [--judge]`: the tiny offline Qwen2.5-VL used by tests and the demo (`--judge`:
the format-trained tiny judge, whose sampled replies parse and whose scores mean nothing)."""

from __future__ import annotations

import argparse


def check_model_dir(path: str, option: str = "DIR") -> None:
    """A folder to write a model into: new, empty, or an earlier tiny model (never a file, never a folder of
    other things, which the model's files would be mixed into)."""
    from pathlib import Path

    from pipeline.errors import UsageError

    p = Path(path)
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{option} {path}: {parent} is a file; expected a folder")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {path} is a file; expected a folder (new, empty, or an earlier tiny model)")
    if p.is_dir() and any(p.iterdir()) and not (p / "config.json").exists():
        raise UsageError(f"{option} {path} holds other files and no model (config.json); "
                         "expected a new or empty folder, or an earlier tiny model")


def run(a: argparse.Namespace) -> int:
    check_model_dir(a.dir)  # before torch is imported
    from pipeline.dev.tiny_model import build_tiny_model

    print(build_tiny_model(a.dir, seed=a.seed, judge=a.judge))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("tiny-model", help="build the tiny random offline Qwen2.5-VL used by tests and the demo")
    sp.add_argument("dir")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--judge", action="store_true",
                    help="train the text side (15-25 s on one CPU core) into the format-trained tiny judge: replies in "
                         "VideoScore2's format that the strict parser reads; the scores carry no information")
    sp.set_defaults(fn=run)
