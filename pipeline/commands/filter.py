"""`vscore filter SCORES OUT --where EXPR [--shards-out URL]`: keep the samples whose scores pass."""

from __future__ import annotations

import argparse
import json
import sys


def run(a: argparse.Namespace) -> int:
    from pipeline.config import StorageOptions
    from pipeline.tools.filter import ExpressionError, filter_scores, format_summary

    storage = StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)
    try:
        s = filter_scores(a.scores, a.out, a.where, storage=storage, shards_out=a.shards_out,
                          shard_size=a.shard_size, run_id=a.run_id, source_prefixes=a.source_prefix,
                          any_source=a.any_source, max_sample_bytes=a.max_sample_bytes)
    except ExpressionError as e:
        print(f"vscore filter: {e}", file=sys.stderr)
        return 2
    print(format_summary(s), file=sys.stderr)
    print(json.dumps(s, default=str))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("filter", help="keep samples whose scores satisfy an SQL expression (DuckDB): write a manifest "
                        "and optionally new WebDataset shards with the scores in each sample's .json")
    sp.add_argument("scores", help="scores dataset root written by `vscore score` (local or s3://), or one Parquet file")
    sp.add_argument("out", help="manifest of kept samples: .parquet or .jsonl (local or s3://)")
    sp.add_argument("--where", required=True,
                    help='expression over the scores columns, e.g. "visual_quality >= 4 and physical_consistency >= 3"')
    sp.add_argument("--shards-out", default=None, help="also write the kept samples as WebDataset shards here (URL)")
    sp.add_argument("--shard-size", type=int, default=1000, help="samples per output shard (default 1000)")
    sp.add_argument("--run-id", default=None, help="the run to filter, when the dataset holds several")
    sp.add_argument("--source-prefix", action="append", default=None, metavar="URL",
                    help="with --shards-out: read source shards only under this folder URL (repeatable; default: the "
                         "input folders the run recorded in <scores>/_vscore/runs/)")
    sp.add_argument("--any-source", action="store_true",
                    help="with --shards-out: read source shards wherever the scores' shard column points")
    sp.add_argument("--max-sample-bytes", type=int, default=None,
                    help="with --shards-out: skip samples larger than this (default: input.max_sample_bytes' default, 1 GiB)")
    sp.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (scores, shards, outputs)")
    sp.add_argument("--profile", default=None, help="AWS profile")
    sp.add_argument("--anon", action="store_true", help="anonymous S3 access")
    sp.set_defaults(fn=run)
