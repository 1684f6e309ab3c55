"""`vscore demo [--out DIR]`: the whole path on this machine (tiny model, loopback S3, local Ray, CPU)."""

from __future__ import annotations

import argparse


def run(a: argparse.Namespace) -> int:
    from pipeline.dev.demo import print_summary, run_demo

    s = run_demo(a.out, overrides=a.overrides)
    print_summary(s)
    return 0 if s["rows_out"] == s["packed"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo", help="end to end on this machine: tiny model, loopback S3, local Ray, CPU")
    sp.add_argument("--out", default="vscore-demo", help="folder for the tiny model and the Parquet output")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides of configs/local.yaml")
    sp.set_defaults(fn=run)
