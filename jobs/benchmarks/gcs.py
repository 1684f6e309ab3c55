"""Mode `gcs` (`--gcs-history`): what the GCS's task-record history costs. A fresh local Ray per cap runs
`--gcs-tasks` trivial actor calls in chunks of 1,000 and reads gcs_server's private memory (RSS - shared)
after each chunk, side by side at vscore's cap (`pipeline.run.job.TASK_EVENTS_KEPT`) and Ray's default
(100,000). Every decode and scoring batch of a run is an actor task, so this is the slope the soak saw in
gcs_server, and where it stops."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import ROOT, load1

NAME = "gcs"
SUMMARY = "--gcs-history: the GCS's memory per task record, at vscore's cap and Ray's default, side by side"
RAY_DEFAULT_CAP = 100_000
CHUNK = 1000

_CHILD = """
import json, os, sys, time
import psutil, ray
cap, chunks, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ray.init(num_cpus=1, include_dashboard=False, _temp_dir=tmp, _system_config={"task_events_max_num_task_in_gcs": cap})
gcs = next(p for p in psutil.Process().children(recursive=True) if "gcs_server" in " ".join(p.cmdline()))
def private_mib():
    m = gcs.memory_info()
    return round((m.rss - m.shared) / 2**20, 1)
@ray.remote
class Echo:
    def f(self, x):
        return x
a = Echo.remote()
ray.get(a.f.remote(0))
series = [private_mib()]
for _ in range(chunks):
    ray.get([a.f.remote(i) for i in range({chunk})])
    time.sleep(2.5)  # task events reach the GCS every second
    series.append(private_mib())
print("RESULT " + json.dumps(series), flush=True)
ray.shutdown()
"""


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--gcs-history", action="store_true", help=SUMMARY)
    g.add_argument("--gcs-tasks", type=int, default=16_000, help="actor calls per cap (in chunks of 1,000)")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.gcs_history)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipeline.run.job import TASK_EVENTS_KEPT

    chunks = max(1, args.gcs_tasks // CHUNK)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    before = round(load1(), 2)
    out: dict[str, Any] = {}
    for cap in (TASK_EVENTS_KEPT, RAY_DEFAULT_CAP):
        tmp = Path(os.environ.get("RAY_TMPDIR", str(work))) / f"gcs-{cap}"
        r = subprocess.run([sys.executable, "-c", _CHILD.replace("{chunk}", str(CHUNK)), str(cap), str(chunks), str(tmp)],
                           capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=1800)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"gcs: the child for cap {cap} failed:\n{r.stderr[-2000:]}")
        series = json.loads(line[len("RESULT "):])
        out[str(cap)] = {"series_mib_per_1000_tasks": series, "growth_mib": round(series[-1] - series[0], 1)}
        print(f"[bench] gcs cap {cap}: gcs_server private {series[0]} -> {series[-1]} MiB over {chunks * CHUNK} tasks", flush=True)
    return {"gcs": {"tasks": chunks * CHUNK, "caps": out, "load": {"load_at_start": before, "load_at_end": round(load1(), 2)}}}


def report(res: dict[str, Any]) -> list[str]:
    g = res.get("gcs")
    if not g:
        return []
    caps = list(g["caps"])
    lines = ["", f"GCS task-record history: gcs_server private MiB after every 1,000 trivial actor calls ({g['tasks']} in all)", "",
             "| tasks | " + " | ".join(f"cap {c}" for c in caps) + " |", "|---|" + "---|" * len(caps)]
    n = len(g["caps"][caps[0]]["series_mib_per_1000_tasks"])
    for i in range(n):
        lines.append(f"| {i * CHUNK} | " + " | ".join(str(g["caps"][c]["series_mib_per_1000_tasks"][i]) for c in caps) + " |")
    lines += ["", "- growth over the run: " + ", ".join(f"cap {c} +{g['caps'][c]['growth_mib']} MiB" for c in caps)]
    return lines
