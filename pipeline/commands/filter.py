"""`vscore filter SCORES OUT --where EXPR [--shards-out URL] [--source-manifest URL]`: keep the samples whose
scores pass. On a manifest run, `--source-manifest` writes the kept rows with the corpus's own columns
(pipeline/tools/corpus_manifest.py) and `--shards-out` packs the kept clips' videos from their URLs."""

from __future__ import annotations

import argparse
import json
import sys


def run(a: argparse.Namespace) -> int:
    from pipeline.config import StorageOptions
    from pipeline.tools.filter import ExpressionError, filter_scores, format_summary

    from pipeline.errors import UsageError
    from pipeline.tools.corpus_manifest import manifest_run_input, write_source_manifest

    storage = StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)
    minput = manifest_run_input(a.scores, a.run_id, storage)
    if a.source_manifest and minput is None:
        raise UsageError(f"--source-manifest: {a.scores} is not the output of a manifest run (input.manifest) "
                         "with one run (or the one named by --run-id)")
    try:  # a manifest run's blocks are not tar shards: its shards are packed from the video URLs below
        s = filter_scores(a.scores, a.out, a.where, storage=storage, shards_out=None if minput else a.shards_out,
                          shard_size=a.shard_size, run_id=a.run_id, source_prefixes=a.source_prefix,
                          any_source=a.any_source, max_sample_bytes=a.max_sample_bytes)
    except ExpressionError as e:
        print(f"vscore filter: {e}", file=sys.stderr)
        return 2
    if minput is not None and (a.source_manifest or a.shards_out):
        dest = a.source_manifest or a.out.rsplit(".", 1)[0] + "-source.jsonl"
        s.update(write_source_manifest(a.out, dest, minput, storage, shards_out=a.shards_out, shard_size=a.shard_size))
    print(format_summary(s), file=sys.stderr)
    if "source_manifest" in s:
        print(f"source manifest: {s['source_rows_written']} rows with the corpus's columns -> {s['source_manifest']}"
              + (f"; shards: {len(s['shards_written'])}" if "shards_written" in s else ""), file=sys.stderr)
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
    sp.add_argument("--source-manifest", default=None, help="manifest runs: also write the kept rows with the corpus "
                    "manifest's own columns (+ vscore_* scores and span) here: .parquet, .csv or .jsonl, ready as input.manifest")
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
