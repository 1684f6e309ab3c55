"""`vscore demo [--out DIR]`: the whole path on this machine (tiny model, loopback S3, local Ray, CPU)."""

from __future__ import annotations

import argparse


def check_demo_args(a: argparse.Namespace) -> None:
    """--out must be a folder (new or an earlier demo's); the overrides must make a valid config. Checked in
    a moment, before the tiny model is built and the S3 server and Ray are started."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.dev.demo import LOCAL_CONFIG
    from pipeline.errors import UsageError

    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {a.out} is a file; expected a folder for the tiny model and the scores")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {a.out}: {parent} is a file; expected a folder")
    load_config(LOCAL_CONFIG, ["input.storage.endpoint_url=http://127.0.0.1:1", f"engine.model={out / 'tiny-model'}",
                               f"output.path={out / 'scores'}", *a.overrides])


def run(a: argparse.Namespace) -> int:
    check_demo_args(a)
    from pipeline.dev.demo import print_summary, run_demo

    s = run_demo(a.out, overrides=a.overrides)
    print_summary(s)
    return 0 if s["rows_out"] == s["packed"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo", help="end to end on this machine: tiny model, loopback S3, local Ray, CPU")
    sp.add_argument("--out", default="vscore-demo", help="folder for the tiny model and the Parquet output")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides of configs/local.yaml")
    sp.set_defaults(fn=run)
