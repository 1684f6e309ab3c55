"""The `vscore` command: pack, score, tiny-model, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _cmd_pack(a: argparse.Namespace) -> int:
    from pipeline.config import StorageOptions
    from pipeline.shards import pack

    storage = StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)
    shards = pack(a.src, a.dest, shard_size=a.shard_size, storage=storage)
    for s in shards:
        print(f"{s['url']}\t{s['samples']}")
    print(f"packed {sum(s['samples'] for s in shards)} samples into {len(shards)} shards", file=sys.stderr)
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.job import run

    cfg = load_config(a.config, a.overrides)
    summary = run(cfg, progress_every_s=a.progress_every)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_tiny(a: argparse.Namespace) -> int:
    from pipeline.tiny_model import build_tiny_model

    print(build_tiny_model(a.dir, seed=a.seed))
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from pipeline.demo import print_summary, run_demo

    s = run_demo(a.out, overrides=a.overrides)
    print_summary(s)
    return 0 if s["rows_out"] == s["packed"] else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="vscore", description="Batch-score AI-generated videos with VideoScore2 on Ray Data.")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("pack", help="pack a folder of videos + prompts into WebDataset shards on any fsspec URL")
    sp.add_argument("src", help="folder with manifest.jsonl (file, prompt) or videos with .txt/.json sidecars")
    sp.add_argument("dest", help="destination URL (local path or s3://bucket/prefix)")
    sp.add_argument("--shard-size", type=int, default=100)
    sp.add_argument("--endpoint-url", default=None)
    sp.add_argument("--profile", default=None)
    sp.add_argument("--anon", action="store_true")
    sp.set_defaults(fn=_cmd_pack)

    sp = sub.add_parser("score", help="run the scoring job described by a YAML config")
    sp.add_argument("config")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. engine.kind=vllm")
    sp.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress log lines")
    sp.set_defaults(fn=_cmd_score)

    sp = sub.add_parser("tiny-model", help="build the tiny random offline Qwen2.5-VL used by tests and the demo")
    sp.add_argument("dir")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=_cmd_tiny)

    sp = sub.add_parser("demo", help="end to end on this machine: tiny model, loopback S3, local Ray, CPU")
    sp.add_argument("--out", default="vscore-demo")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides of configs/local.yaml")
    sp.set_defaults(fn=_cmd_demo)

    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
