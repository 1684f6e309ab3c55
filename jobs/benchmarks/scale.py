"""Mode `scale` (`--scale`): the control plane against rows.

Two parts, per size:

- `state`: N synthetic rows committed by the real sink and state code (`pipeline/dev/scale_state.py`: one
  Parquet file + commit marker per 64-row write task, one shard manifest per 1000-row shard), on local disk
  and on the embedded moto S3; then, each in a fresh process, the start-up of a rerun: first with every
  marker unfolded (what the row-level state of earlier versions loaded at every start, and what the first
  fold of a crashed run costs), then from the compact checkpoint (every later start and the summary).
- `pipeline` (`scale_pipeline.py`): the real read -> decode -> score (FixedOutputEngine) -> sink -> fold /
  compaction path over 28x28 2-frame clips with distinct prompts, input and output on moto S3, with driver RSS
  peak, Ray processes' memory, files and objects written, CPU per row by process kind, then the resume
  start-up over that output (fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import ROOT, fmt

NAME = "scale"
SUMMARY = "--scale: control plane vs rows (state start-up/RSS at 1e4..1e6 committed rows, local + moto S3; the real pipeline on moto S3)"


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--scale", action="store_true", help=SUMMARY)
    g.add_argument("--scale-state-sizes", default="10000,100000,1000000", help="committed rows for the state part")
    g.add_argument("--scale-pipeline-sizes", default="10000,100000,1000000",
                   help="rows for the real-pipeline part ('' to skip); ~40 rows/s on 2 shared vCPUs (the score store's "
                        "per-row requests to moto dominate), so 10^6 is hours there")
    g.add_argument("--scale-backends", default="local,s3", help="local, s3 (embedded moto): the state part")
    g.add_argument("--scale-pipeline-backend", default="s3", choices=("s3", "local"),
                   help="where the real-pipeline part's input shards and output live (s3: the embedded moto, in a child process)")
    g.add_argument("--scale-rows-per-task", type=int, default=64, help="rows per synthetic write task (output.min_rows_per_file)")
    g.add_argument("--scale-shard-size", type=int, default=1000, help="rows per synthetic shard (one manifest each)")
    g.add_argument("--scale-shards-per-task", type=int, default=1,
                   help=">1: each write task holds that many whole shards (large tasks, the shape compaction leaves)")
    g.add_argument("--scale-placeholder", action="store_true",
                   help="write the folded state of an uncompacted run directly (checkpoint + one tiny placeholder object "
                        "per committed file; pipeline/dev/scale_state.py placeholder_state): the worst-case start-up at "
                        "sizes the sink cannot write through moto in time")
    g.add_argument("--scale-fold-every", type=int, default=0,
                   help="fold the state every N shards while writing, as a running driver does (0: never; the "
                        "'unfolded' start-up then loads every marker)")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.scale)


_CHILD = """
import json, sys
from pipeline.config import ScoreConfig
from pipeline.dev.scale_state import measure_resume
cfg = ScoreConfig.model_validate(json.loads(sys.argv[1]))
print("RESULT " + json.dumps(measure_resume(cfg, consolidate=sys.argv[2] == "1")))
"""


def _child_resume(cfg_json: dict[str, Any], consolidate: bool = True) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg_json), "1" if consolidate else "0"],
                       capture_output=True, text=True, env=env, timeout=3600)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"resume child failed: {p.stderr[-2000:]}")
    return json.loads(line[7:])


def _state_cfg(out: str, endpoint: str | None) -> dict[str, Any]:
    return {"input": {"shards": "synthetic://shard-*.tar"},
            "output": {"path": out, "storage": {"endpoint_url": endpoint}, "shards_per_group": 100}}


def bench_state(sizes: list[int], backends: list[str], work: Path, rows_per_task: int = 64, shard_size: int = 1000,
                shards_per_task: int = 1, fold_every: int = 0, placeholder: bool = False) -> dict[str, Any]:
    from pipeline.config import ScoreConfig
    from pipeline.dev.scale_state import commit_rows, placeholder_state

    out: dict[str, Any] = {}
    s3 = None
    undo = None
    try:
        for backend in backends:
            endpoint = None
            if backend == "s3":
                from pipeline.dev.s3_server import EmbeddedS3

                from .moto_index import install

                undo = undo or install()  # listings cost as on S3, not a scan of the bucket (moto_index.py)
                s3 = s3 or EmbeddedS3(buckets=["vscore-scale"]).start()
                endpoint = s3.endpoint_url
            for n in sizes:
                path = (f"s3://vscore-scale/{n}-{os.getpid()}" if backend == "s3" else str(work / "scale-state" / f"{n}"))
                if backend != "s3":
                    shutil.rmtree(path, ignore_errors=True)
                cj = _state_cfg(path, endpoint)
                progress = max(1, (n // shard_size) // 20)
                if placeholder:
                    w = placeholder_state(ScoreConfig.model_validate(cj), n, shard_size=shard_size,
                                          rows_per_task=rows_per_task, progress_every=progress)
                else:
                    w = commit_rows(ScoreConfig.model_validate(cj), n, shard_size=shard_size, rows_per_task=rows_per_task,
                                    shards_per_task=shards_per_task, consolidate_every=fold_every, progress_every=progress)
                w["uptime_after_write"] = os.getloadavg()
                unfolded = _child_resume(cj, consolidate=True)  # loads every marker, then folds them
                compact = _child_resume(cj)  # from the checkpoint
                r = {"write": w, "unfolded_start": unfolded, "compact_start": compact}
                out[f"{backend}:{n}"] = r
                print(f"[bench] scale state {backend} {n} rows: {w['write_tasks']} write tasks in {w['write_s']} s; start-up "
                      f"unfolded {unfolded['startup_s']} s (+{unfolded['rss_peak_added_mb']} MB peak), compact "
                      f"{compact['startup_s']} s (load {compact['load_s']}, leftover scan {compact['cleanup_s']}; "
                      f"+{compact['rss_peak_added_mb']} MB peak)", flush=True)
                if backend != "s3":
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        if s3 is not None:
            s3.stop()
        if undo is not None:
            undo()
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    state_sizes = [int(x) for x in args.scale_state_sizes.split(",") if x]
    pipe_sizes = [int(x) for x in args.scale_pipeline_sizes.split(",") if x]
    res: dict[str, Any] = {"scale": {"state": bench_state(
        state_sizes, args.scale_backends.split(","), work, args.scale_rows_per_task, args.scale_shard_size,
        args.scale_shards_per_task, args.scale_fold_every, args.scale_placeholder)}}
    if pipe_sizes:
        from .scale_pipeline import bench_pipeline

        res["scale"]["pipeline"] = bench_pipeline(pipe_sizes, args, work, _child_resume)
    return res


def report(res: dict[str, Any]) -> list[str]:
    sc = res.get("scale")
    if not sc:
        return []
    lines = ["", "Control plane vs committed rows (synthetic rows through the real sink/state code; fresh process per start-up)", "",
             "| backend:rows | write tasks | start-up, markers unfolded (s) | +RSS peak (MB) | start-up, compact (s) | of it leftover scan (s) | +RSS peak (MB) |",
             "|---|---|---|---|---|---|---|"]
    for k, r in sc["state"].items():
        u, c = r["unfolded_start"], r["compact_start"]
        lines.append(f"| {k} | {r['write']['write_tasks']} | {u['startup_s']} | {u['rss_peak_added_mb']} | {c['startup_s']} | "
                     f"{c['cleanup_s']} | {c['rss_peak_added_mb']} |")
    if sc.get("pipeline"):
        lines += ["", "| rows (real pipeline) | videos/s | driver RSS peak (MiB) | Ray RSS / PSS sum peak (MiB) | parquet files | "
                  "objects written | driver CPU ms/row | control-plane CPU ms/row | resume start-up (s) | +RSS (MB) | load1 mean |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in sc["pipeline"].items():
            cp = r.get("cpu_ms_per_row", {}).get("control plane (all but decode actors and moto)")
            objs = sum(r.get("objects", {}).values()) if r.get("objects") else None
            lines.append(f"| {n} | {fmt(r['vps'], 2)} | {r['driver_rss_peak_mib']} | {r['ray_rss_sum_peak_mib']} / "
                         f"{r.get('ray_pss_sum_peak_mib')} | {r['files']} | {objs} | {r['driver_cpu_per_row_ms']} | {cp} | "
                         f"{r['resume']['startup_s']} | {r['resume'].get('rss_peak_added_mb')} | {r.get('load1', {}).get('mean')} |")
    return lines
