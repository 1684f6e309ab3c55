"""Mode `soak` (`--soak`): memory over a long run (issue 16, item 5).

One run of the real pipeline (read -> decode -> score -> sink) for `--soak-minutes` (default 60) over the
real clips (../shared/data/videos, else samples/videos) cycled through a JSONL manifest: every row is a
distinct row id (its own symlink to the clip) with a distinct prompt, so neither the score store's dedupe (keyed by content hash +
prompt) nor the cross-run cache short-circuits any row (the summary's `duplicates` / `from_cache` are
checked to be 0). The FixedOutputEngine sleeps `1 / --soak-rate` s per request (no CPU), so the run is
paced at about that many rows per second by a sleeping engine, and the rows are sized to last the
minutes; one decode actor (1 CPU) keeps the load near one core on a shared machine.

Sampled every `--soak-sample-s` (default 10 s): driver RSS/private (RSS - shared)/PSS, Ray processes' RSS
sum, private sum and PSS sum (shared object-store pages once), RSS by process kind (jobs/benchmarks/procs.py),
the object store's used bytes and spill totals (pipeline/dev/ray_memory.py), rows scored (the run's stats
actor) and the 1-minute load. The table and the check use each minute's peak of those samples: a decode actor
holds a batch of frames or not at the instant of one sample (its private memory swings by ~2x between two
samples), so one sample a minute is a coin toss, and the peak is the memory a node must have.

The check ("memory after 10 minutes stays within 10%": a leak is growth): per checked series, the peak of
every later minute while rows are still being scored is at most 110% of minute 10's peak. The minutes after
the last row (actors leaving, the end-of-run compaction) are shown, not checked. Checked: driver RSS and
private, Ray processes' private sum and PSS sum. Shown only: the Ray RSS sum (counts each object-store page
once per process that has mapped it, so it grows toward store size x processes without any allocation),
driver PSS (its share of shared pages changes as other processes come and go) and the store's used bytes
(in-flight blocks, bounded by the store). The soak runs with a fixed object store (`ray.object_store_memory`,
2 GiB here, `--soak-set` to change) as an operator sizes one, so the store's pages are all in use early."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .common import fmt, load1, wait_quiet

NAME = "soak"
SUMMARY = "--soak: memory over a long run (--soak-minutes, default 60): driver/Ray RSS, PSS, object store sampled each minute"

SERIES = ("driver_rss", "driver_private", "driver_pss", "ray_rss_sum", "ray_private_sum", "ray_pss_sum", "store_used")  # MiB
CHECKED = ("driver_rss", "driver_private", "ray_private_sum", "ray_pss_sum")
CHECK_AT_MIN, CHECK_TOL = 10.0, 0.10
SOAK_STORE_BYTES = 2 * 2**30


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--soak", action="store_true", help=SUMMARY)
    g.add_argument("--soak-minutes", type=float, default=60.0, help="length of the run (rows = rate x minutes)")
    g.add_argument("--soak-rate", type=float, default=2.0, help="rows/s the sleeping engine paces the run at (decode must keep up)")
    g.add_argument("--soak-sample-s", type=float, default=10.0, help="sampling interval (s); the table and check use each minute's peak")
    g.add_argument("--soak-set", action="append", default=[], help="pipeline override dotted.key=value (repeatable)")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.soak)


def _manifest(work: Path, rows: int) -> tuple[str, list[str]]:
    from .clips import real_clips

    clips, src = real_clips()
    if not clips:
        raise SystemExit("soak: no real clips (../shared/data/videos or samples/videos)")
    prompts: dict[str, str] = {}
    for man in Path(src).glob("manifest.jsonl"):
        for line in man.read_text().splitlines():
            r = json.loads(line)
            prompts[str((Path(src) / r["file"]).resolve())] = r.get("prompt") or ""
    d = work / "soak"
    d.mkdir(parents=True, exist_ok=True)
    # one symlink per row: the read stage turns a second row of the same video URL and span within a
    # manifest block into an error row (a duplicate), so each row names its own path to the same bytes
    links = d / "links"
    links.mkdir(exist_ok=True)
    path = d / f"manifest-{rows}.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            c = clips[i % len(clips)].resolve()
            link = links / f"{i:07d}{c.suffix}"
            if not link.is_symlink():
                link.symlink_to(c)
            f.write(json.dumps({"video": str(link), "prompt": f"soak row {i}: {prompts.get(str(c), c.stem)}"}) + "\n")
    return str(path), [c.name for c in clips]


class SoakSampler:
    """Every `every` s (a daemon thread): one row of the series."""

    def __init__(self, every: float) -> None:
        from .procs import Poller, ProcSampler
        from .runner import RowsWatcher

        sampler = self

        class _P(Poller):
            def poll(self) -> None:
                sampler.sample()

        self.every = every
        self.procs = ProcSampler(every=every, pss_every=1)
        self.rows = RowsWatcher()
        self.thread = _P()
        self.thread.every = every
        self.series: list[dict[str, Any]] = []
        self.t0 = time.time()

    def sample(self) -> None:
        from pipeline.dev.ray_memory import store_stats

        self.procs.sample(count=False)
        self.rows.poll()
        cur = self.procs.current
        try:
            st = store_stats()
        except Exception as e:  # noqa: BLE001 - a failed query is a gap in one series, not a failed soak
            st = {"error": repr(e)}
        mib = 2 ** 20
        row = {"t_min": round((time.time() - self.t0) / 60, 2), "rows": self.rows.series[-1][1] if self.rows.series else 0,
               "load1": round(load1(), 2),
               "driver_rss": round(cur["driver_rss"] / mib, 1), "driver_private": round(cur["driver_private"] / mib, 1),
               "driver_pss": round(cur["driver_pss"] / mib, 1),
               "ray_rss_sum": round(cur["others_rss_sum"] / mib, 1), "ray_private_sum": round(cur["others_private_sum"] / mib, 1),
               "ray_pss_sum": round((cur["pss_sum"] or 0) / mib, 1),
               "store_used": round(st.get("used", 0) / mib, 1), "spilled_total": round(st.get("spilled", 0) / mib, 1),
               "by_kind": {k: round(v / mib, 1) for k, v in sorted(cur["by_kind"].items()) if not k.endswith(" private")},
               "by_kind_private": {k[:-8]: round(v / mib, 1) for k, v in sorted(cur["by_kind"].items()) if k.endswith(" private")},
               "ray_system_private": {k: round(v / mib, 1) for k, v in sorted(cur.get("system_private", {}).items())}}
        self.series.append(row)
        if len(self.series) > 1 and int(self.series[-2]["t_min"]) == int(row["t_min"]):
            return  # one line a minute
        print(f"[soak] {row['t_min']:6.1f} min  rows {row['rows']:.0f}  load {row['load1']}  driver RSS {row['driver_rss']} MiB  "
              f"Ray RSS sum {row['ray_rss_sum']}  private {row['ray_private_sum']}  PSS {row['ray_pss_sum']}  "
              f"store {row['store_used']} (spilled {row['spilled_total']})  decode {row['by_kind_private'].get('decode actors')}  "
              f"score {row['by_kind_private'].get('score actor')}", flush=True)

    def __enter__(self) -> "SoakSampler":
        self.t0 = time.time()
        self.sample()
        self.thread.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.thread.__exit__(*exc)


def minutes(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples folded into one row per started minute: each series' peak, rows/load/time of the last
    sample, the breakdowns of the sample with the largest Ray private sum."""
    out: list[dict[str, Any]] = []
    for r in series:
        if out and int(out[-1]["t_min"]) == int(r["t_min"]):
            m = out[-1]
            for k in SERIES:
                if r.get(k) is not None:
                    m[k] = max(m.get(k) or 0, r[k])
            if r["ray_private_sum"] >= m["_peak_private"]:
                m.update(by_kind=r["by_kind"], by_kind_private=r["by_kind_private"], _peak_private=r["ray_private_sum"])
            m.update(t_min=r["t_min"], rows=r["rows"], load1=r["load1"], spilled_total=r["spilled_total"], samples=m["samples"] + 1,
                     ray_system_private=r.get("ray_system_private", {}))
        else:
            out.append({**r, "_peak_private": r["ray_private_sum"], "samples": 1})
    return [{k: v for k, v in m.items() if k != "_peak_private"} for m in out]


def check(series: list[dict[str, Any]], at_min: float = CHECK_AT_MIN, tol: float = CHECK_TOL) -> dict[str, Any]:
    """Per series, over the per-minute peaks (`minutes`): minute `at_min`'s peak (the first minute row at or
    after it), the largest and smallest later peak while rows were still being scored, as ratios of it; for the
    CHECKED series pass = no later peak above 1 + `tol` (growth). `None` when the run was too short."""
    rows = minutes(series)
    base = next((r for r in rows if r["t_min"] >= at_min - 0.05), None)
    total = max((r["rows"] for r in rows), default=0)
    # scoring still going on: up to the first minute whose rows reached the total (the rest is the teardown)
    end = next((i for i, r in enumerate(rows) if r["rows"] >= total), len(rows) - 1)
    out: dict[str, Any] = {}
    for k in SERIES:
        if base is None or not base.get(k):
            out[k] = None
            continue
        later_rows = [r for r in rows[: end + 1] if r["t_min"] > base["t_min"] and r.get(k) is not None]
        if not later_rows:
            out[k] = None
            continue
        later = [r[k] for r in later_rows]
        hi, lo = max(later) / base[k], min(later) / base[k]
        worst = max(later_rows, key=lambda r: r[k])
        out[k] = {"at_10": base[k], "max_ratio": round(hi, 3), "min_ratio": round(lo, 3), "last": later[-1],
                  "checked": k in CHECKED, "pass": hi <= 1 + tol if k in CHECKED else None,
                  # what a reader needs to tell growth from a transient: how many minutes were over, and (Ray
                  # sums) which process kinds differ from minute 10 at the worst minute
                  "minutes_over": sum(v > base[k] * (1 + tol) for v in later), "minutes": len(later),
                  "worst_min": round(worst["t_min"], 1)}
        if k == "ray_private_sum":
            w, b = worst.get("by_kind_private") or {}, base.get("by_kind_private") or {}
            delta = {c: round(w.get(c, 0) - b.get(c, 0), 1) for c in set(w) | set(b)}
            out[k]["worst_by_kind_delta"] = dict(sorted(((c, d) for c, d in delta.items() if d), key=lambda x: -abs(x[1])))
    if base is not None and base.get("ray_system_private"):
        # Ray's own processes (raylet, GCS, agents): minute 10 vs the last scoring minute, by process, for the
        # slow growth the 10% check can miss in an hour but an overnight run would not
        first, last = base["ray_system_private"], rows[end].get("ray_system_private") or {}
        span = max(1e-9, rows[end]["t_min"] - base["t_min"])
        out["ray_system_by_process"] = {
            name: {"at_10": first.get(name, 0.0), "last": last.get(name, 0.0),
                   "mib_per_hour": round((last.get(name, 0.0) - first.get(name, 0.0)) * 60 / span, 1)}
            for name in sorted(set(first) | set(last))}
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray

    from pipeline.config import load_config
    from pipeline.run.job import init_ray
    from pipeline.run.job import run as run_pipeline

    from .runner import BENCH_ENGINE

    rows = int(round(args.soak_rate * args.soak_minutes * 60))
    manifest, clip_names = _manifest(work, rows)
    out = work / "out" / f"soak-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    base = {
        "input": {"manifest": manifest},
        "decode": {"actors": 1, "num_cpus": 1, "threads": 1},
        "engine": {"kind": BENCH_ENGINE, "actors": 1, "num_gpus": 0, "num_cpus": 0.1, "batch_size": 16, "batches_in_flight": 1,
                   "engine_kwargs": {"sleep_s": 1.0 / args.soak_rate}},
        "output": {"path": str(out)},
        "ray": {"num_cpus": 2, "progress_bars": False, "object_store_memory": SOAK_STORE_BYTES},
    }
    cfg = load_config(None, list(args.soak_set), base=base)
    load = wait_quiet(args.load_threshold, 0.0, "soak")  # memory, not speed: never waits; the load is in every sample
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(cfg)
    print(f"[soak] {rows} rows over {len(clip_names)} real clips, paced at {args.soak_rate} rows/s (~{args.soak_minutes:g} min), "
          f"sampling every {args.soak_sample_s:g} s; output {out}", flush=True)
    try:
        with SoakSampler(args.soak_sample_s) as s:
            t = time.perf_counter()
            summary = run_pipeline(cfg, progress_every_s=600)
            wall = time.perf_counter() - t
            s.sample()  # the end of the run
    finally:
        ray.shutdown()
    bad = summary.get("rows_out") != rows or summary.get("errors") or summary.get("duplicates") or summary.get("from_cache")
    res = {"rows": rows, "rate": args.soak_rate, "clips": clip_names, "wall_s": round(wall, 1),
           "summary": {k: summary.get(k) for k in ("rows_out", "ok", "errors", "duplicates", "from_cache", "videos_per_s")},
           "series": s.series, "check": check(s.series), "overrides": list(args.soak_set),
           "load": {**load, "load_at_end": round(load1(), 2),
                    "load_mean": round(sum(r["load1"] for r in s.series) / max(1, len(s.series)), 2)}}
    series_file = work / "soak" / f"series-{time.strftime('%Y%m%dT%H%M%S')}.json"
    series_file.write_text(json.dumps(res, indent=1))
    res["series_file"] = str(series_file)
    print(f"[soak] series saved to {series_file}", flush=True)
    if bad:
        print(f"[soak] WARNING: the run did not score every row exactly once: {res['summary']}", flush=True)
    if not bad:
        shutil.rmtree(out, ignore_errors=True)
    return {"soak": res}


def report(res: dict[str, Any]) -> list[str]:
    sk = res.get("soak")
    if not sk:
        return []
    lines = ["", f"Soak: {sk['rows']} rows over {len(sk['clips'])} real clips cycled, paced at {sk['rate']} rows/s, wall "
             f"{sk['wall_s']:.0f} s; summary {sk['summary']}; 1-min load mean {sk['load']['load_mean']}", "",
             "Per-minute peaks of the samples (MiB):", "",
             "| min | rows | load | driver RSS | driver private | driver PSS | Ray RSS sum | Ray private sum | Ray PSS sum | store used | spilled | decode actors private | score actor private |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in minutes(sk["series"]):
        p = r["by_kind_private"]
        lines.append(f"| {r['t_min']:.1f} | {r['rows']:.0f} | {r['load1']} | {r['driver_rss']} | {r.get('driver_private', '')} | {r['driver_pss']} | {r['ray_rss_sum']} | "
                     f"{r['ray_private_sum']} | {r['ray_pss_sum']} | {r['store_used']} | {r['spilled_total']} | "
                     f"{p.get('decode actors', '')} | {p.get('score actor', '')} |")
    lines += ["", f"Check (every minute's peak after minute {CHECK_AT_MIN:g}, while rows are scored, at most {1 + CHECK_TOL:.0%} of "
              f"minute {CHECK_AT_MIN:g}'s peak; checked: {', '.join(CHECKED)}), MiB:", ""]
    for k, c in sk["check"].items():
        if k == "ray_system_by_process":
            lines.append("- Ray's own processes, private MiB at minute 10 -> last scoring minute (MiB/hour): " + ", ".join(
                f"{name} {v['at_10']} -> {v['last']} ({v['mib_per_hour']:+g})" for name, v in c.items()))
            continue
        if c is None:
            lines.append(f"- {k}: n/a (run shorter than {CHECK_AT_MIN:g} min)")
        else:
            verdict = ("**PASS**" if c["pass"] else "**FAIL**") if c.get("checked", True) else "shown, not checked"
            over = f"; {c['minutes_over']} of {c['minutes']} later minutes over" if "minutes_over" in c else ""
            why = ""
            if c.get("worst_by_kind_delta"):
                why = f"; at its worst minute ({c['worst_min']:g}) vs minute 10, by kind: " + ", ".join(
                    f"{d:+g} {kind}" for kind, d in list(c["worst_by_kind_delta"].items())[:4])
            lines.append(f"- {k}: {c['at_10']} at 10 min, later max x{fmt(c['max_ratio'], 3)} / min x{fmt(c['min_ratio'], 3)}, "
                         f"last {c['last']}{over}{why}: {verdict}")
    return lines
