"""`vscore report SCORES [--out report.html]`: a self-contained HTML report of a scores dataset."""

from __future__ import annotations

import argparse
import sys


def run(a: argparse.Namespace) -> int:
    from pipeline.config import StorageOptions
    from pipeline.tools.report import write_report

    storage = StorageOptions(endpoint_url=a.endpoint_url, profile=a.profile, anon=a.anon)
    png_dir = None if a.no_png else (a.png_dir or str(a.out).rsplit(".", 1)[0] + "-plots")
    facts = write_report(a.scores, a.out, storage=storage, run_id=a.run_id, png_dir=png_dir, title=a.title)
    pre = facts["prefilter"]
    saved = f", ~{pre['gpu_s_saved']:.1f} GPU-s saved" if pre["skipped"] and pre["gpu_s_saved"] is not None else ""
    print(f"report: {facts['out']}  ({facts['rows']} rows, {facts['ok']} ok, {facts['errors']} errors, "
          f"{facts['skipped']} skipped by the prefilter{saved}, {facts['scored']} with all three scores)", file=sys.stderr)
    if png_dir:
        print(f"plots:  {png_dir}/ ({', '.join(facts['plots'])})", file=sys.stderr)
    print(facts["out"])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("report", help="self-contained HTML report of a scores dataset (distributions, correlations, "
                        "calibration, errors, throughput, best/worst examples)")
    sp.add_argument("scores", help="scores dataset root written by `vscore score` (local or s3://), or one Parquet file")
    sp.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    sp.add_argument("--png-dir", default=None, help="also write the plots as PNG here (default: <out>-plots/)")
    sp.add_argument("--no-png", action="store_true", help="write only the HTML")
    sp.add_argument("--run-id", default=None, help="only this run (default: every run in the dataset)")
    sp.add_argument("--title", default=None, help="page title")
    sp.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    sp.add_argument("--profile", default=None, help="AWS profile")
    sp.add_argument("--anon", action="store_true", help="anonymous S3 access")
    sp.set_defaults(fn=run)
