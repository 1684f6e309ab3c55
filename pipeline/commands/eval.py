"""`vscore eval --scores S --labels L`: the VideoScore2 paper's metrics (point and pairwise benchmarks)."""

from __future__ import annotations

import argparse
import json

from pipeline.commands.reparse import add_storage_args, storage_from_args


def run(a: argparse.Namespace) -> int:
    from pipeline.tools.evaluate import evaluate, format_report, parse_label_columns

    res = evaluate(a.scores, a.labels, kind=a.kind, benchmark=a.benchmark, use=a.use, ties=a.ties,
                   tie_band=a.tie_band, compare=a.compare, label_columns=parse_label_columns(a.label_columns),
                   score_key=a.score_key, run_id=a.run_id, storage=storage_from_args(a))
    print(json.dumps(res) if a.json else format_report(res))
    return 0


# kept in step with pipeline.tools.evaluate (not imported here so that `vscore --help` stays fast)
BENCHMARKS = ("generic", "mjbench", "videophy2", "videogen-rewardbench", "t2vqa")
USES = ("soft", "hard", "expected")
COMPARES = ("v", "t", "p", "sum", "mean")


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("eval", help="accuracy / relaxed accuracy / PLCC / SRCC or pairwise accuracy against human labels",
                        description="Point benchmarks: per-dimension accuracy after int(min(5, max(1, round(x)))), relaxed "
                                    "accuracy (|d|<=1), PLCC and SRCC on the raw scores, and their average. Pairwise: "
                                    "accuracy with or without ties. See docs/eval.md.")
    sp.add_argument("--scores", required=True, help="scores dataset (hive Parquet directory or file, any fsspec URL)")
    sp.add_argument("--labels", required=True, help="labels: JSONL, JSON list, CSV or Parquet, keyed by `key` "
                                                    "(pairwise: key_a, key_b, label)")
    sp.add_argument("--kind", choices=["auto", "point", "pairwise"], default="auto",
                    help="default: pairwise for videogen-rewardbench/t2vqa or when the labels have key_a/key_b, else point")
    sp.add_argument("--benchmark", choices=BENCHMARKS, default="generic",
                    help="protocol: mjbench = 0/1/2 remap + overall; videophy2 = SA->t, PC->p only; "
                         "videogen-rewardbench = VQ(v), TA(t), Overall(v+t+p); t2vqa = mean(v,t,p)")
    sp.add_argument("--ties", action=argparse.BooleanOptionalAction, default=True,
                    help="pairwise: count ties (|diff| <= tie band -> 'same'); --no-ties skips GT 'same' pairs")
    sp.add_argument("--tie-band", type=float, default=None,
                    help="pairwise tie band (default 0.001 for soft/expected scores, 0.5 for hard integers, as the official code)")
    sp.add_argument("--use", choices=USES, default="soft", help="model scores: soft (paper default), hard or expected")
    sp.add_argument("--compare", choices=COMPARES, default=None,
                    help="pairwise score for the overall/label column (default: the benchmark's; generic = mean)")
    sp.add_argument("--label-columns", default=None,
                    help="NAME=COLUMN,... mapping, NAME in key, key_a, key_b, visual_quality (v), text_alignment (t), "
                         "physical_consistency (p), overall")
    sp.add_argument("--score-key", default="key", help="scores column matched against the label keys")
    sp.add_argument("--run-id", default=None, help="only rows of this run_id")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    add_storage_args(sp)
    sp.set_defaults(fn=run)
