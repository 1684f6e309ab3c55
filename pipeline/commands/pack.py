"""`vscore pack SRC DEST`: a folder of videos + prompts -> WebDataset shards on any fsspec URL."""

from __future__ import annotations

import argparse
import sys


def run(a: argparse.Namespace) -> int:
    from pipeline.config import StorageOptions
    from pipeline.tools.pack import pack

    storage = StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)
    shards = pack(a.src, a.dest, shard_size=a.shard_size, storage=storage)
    for s in shards:
        print(f"{s['url']}\t{s['samples']}")
    print(f"packed {sum(s['samples'] for s in shards)} samples into {len(shards)} shards", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pack", help="pack a folder of videos + prompts into WebDataset shards on any fsspec URL")
    sp.add_argument("src", help="folder with manifest.jsonl (file, prompt) or videos with .txt/.json sidecars")
    sp.add_argument("dest", help="destination URL (local path or s3://bucket/prefix)")
    sp.add_argument("--shard-size", type=int, default=100, help="samples per shard")
    sp.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    sp.add_argument("--profile", default=None, help="AWS profile")
    sp.add_argument("--anon", action="store_true", help="anonymous S3 access")
    sp.set_defaults(fn=run)
