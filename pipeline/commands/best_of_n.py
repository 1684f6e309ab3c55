"""`vscore best-of-n SCORES OUT --group-by prompt`: per group, the video VideoScore2 rates best."""

from __future__ import annotations

import argparse
import json

from pipeline.commands.reparse import add_storage_args, storage_from_args


def run(a: argparse.Namespace) -> int:
    from pipeline.tools.best_of_n import best_of_n

    summary = best_of_n(a.scores, a.out, group_by=a.group_by, aggregate=a.aggregate, use=a.use,
                        keep_out_of_range=a.keep_out_of_range, run_id=a.run_id, storage=storage_from_args(a))
    print(json.dumps(summary, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("best-of-n", help="per group (e.g. prompt), pick the best-scored video (official rule: argmax mean(v,t,p))",
                        description="Per group: highest aggregate of the three scores (default mean of hard scores, the "
                                    "official best-of-N rule), ties broken by the aggregate of the soft scores, then by the "
                                    "smallest key/shard/row_id. Failed rows are skipped and counted. See docs/eval.md.")
    sp.add_argument("scores", metavar="SCORES", help="scores dataset (hive Parquet directory or file, any fsspec URL)")
    sp.add_argument("out", metavar="OUT", help="output file: Parquet, or CSV when it ends with .csv")
    sp.add_argument("--group-by", default="prompt", help="column to group by, or meta.FIELD for a field of meta_json")
    sp.add_argument("--aggregate", choices=["mean", "sum", "min"], default="mean", help="how the three scores combine")
    sp.add_argument("--use", choices=["hard", "soft", "expected"], default="hard",
                    help="primary scores (hard = official; the other kind breaks ties)")
    sp.add_argument("--keep-out-of-range", action="store_true", help="let rows with out-of-range hard scores compete")
    sp.add_argument("--run-id", default=None, help="only rows of this run_id")
    add_storage_args(sp)
    sp.set_defaults(fn=run)
