"""`vscore reparse IN OUT`: re-parse raw_output of a scores dataset with the current parser (no GPU, streaming)."""

from __future__ import annotations

import argparse
import json


def add_storage_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    sp.add_argument("--profile", default=None, help="AWS profile")
    sp.add_argument("--anon", action="store_true", help="anonymous S3 access")


def storage_from_args(a: argparse.Namespace):
    from pipeline.config import StorageOptions

    return StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)


def run(a: argparse.Namespace) -> int:
    from pipeline.tools.reparse import reparse_dataset

    parts = None if a.partition_cols is None else [c.strip() for c in a.partition_cols.split(",") if c.strip()]
    summary = reparse_dataset(a.src, a.dest, storage=storage_from_args(a), partition_cols=parts,
                              batch_size=a.batch_size, overwrite=a.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("reparse", help="re-parse raw_output of an existing scores dataset into a new dataset (same schema)",
                        description="Stream IN batch by batch, re-run the current parser on raw_output of ok rows "
                                    "(error rows are copied), and write OUT with the same schema and partition columns. "
                                    "Soft/expected scores are kept only where the hard score is unchanged, else nulled.")
    sp.add_argument("src", metavar="IN", help="scores dataset: hive-partitioned Parquet directory or one Parquet file (any fsspec URL)")
    sp.add_argument("dest", metavar="OUT", help="output dataset URL (must not exist or be empty, unless --overwrite)")
    sp.add_argument("--partition-cols", default=None,
                    help="comma-separated hive partition columns of OUT (default: those of IN; '' = none)")
    sp.add_argument("--batch-size", type=int, default=4096, help="rows per streamed record batch")
    sp.add_argument("--overwrite", action="store_true", help="delete a non-empty OUT first")
    add_storage_args(sp)
    sp.set_defaults(fn=run)
