"""Section `pipeline`: `pipeline.run.job.run` (local shards, FixedOutputEngine, 2 CPUs) vs decode alone
(`decode_video` in a 2-process pool over the same samples), interleaved; variants (`--variant`)
measured side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .clips import generated_clips, real_clips
from .common import fmt, load1, median, wait_quiet
from .runner import FULL_PIPELINE_N, QUICK_PIPELINE_N, Runner, pack_samples


SESSION_SETTINGS = {"job.IDLE_WORKER_KEEP_MS"}  # read by pipeline.run.job.init_ray when it starts the local Ray


def _tot(cpu: dict[str, float]) -> float:
    """Total CPU-s of a by-kind dict (the "(sys)" entries are parts of their kind, not extra)."""
    return sum(v for k, v in cpu.items() if not k.endswith(" (sys)"))


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`NAME=key=value,key=value`: config overrides (`decode.batch_size=16`), `job.NAME=value` (a module
    constant of pipeline.run.job, e.g. `job.WRITE_NUM_CPUS=1`) or `ctx.NAME=value` (a Ray DataContext field)."""
    name, _, rest = spec.partition("=")
    return name, [x for x in rest.split(",") if x]


class _Applied:
    """Apply a variant's `job.*` / `ctx.*` settings in the driver for one run, then restore them."""

    def __init__(self, settings: list[str]) -> None:
        self.settings = settings
        self.undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> list[str]:
        import yaml

        import pipeline.run.job as job
        import ray.data

        rest = []
        for item in self.settings:
            key, _, raw = item.partition("=")
            if key.startswith("job.") or key.startswith("ctx."):
                obj = job if key.startswith("job.") else ray.data.DataContext.get_current()
                *path, attr = key[4:].split(".")  # ctx.execution_options.actor_locality_enabled
                for part in path:
                    obj = getattr(obj, part)
                self.undo.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, yaml.safe_load(raw))
            else:
                rest.append(item)
        return rest

    def __exit__(self, *exc: Any) -> None:
        for obj, attr, old in reversed(self.undo):
            setattr(obj, attr, old)


def bench_pipeline(args: argparse.Namespace, work: Path, runner: Runner) -> dict[str, Any]:
    reals, _ = real_clips()
    clips = reals or generated_clips(work, 854, 480, 4)
    n_small, n_large = QUICK_PIPELINE_N if args.quick else FULL_PIPELINE_N
    reps = args.pipeline_reps or (1 if args.quick else 3)
    shard_size = 8  # blocks of 8 samples: a fine enough grain for the in-run rate
    small = pack_samples(work, "real8", clips, n_small, shard_size)
    large = pack_samples(work, "real8", clips, n_large, shard_size)
    variants = [parse_variant(v) for v in args.variant] or [("default", [])]
    load = wait_quiet(args.load_threshold, args.max_wait, "pipeline")
    runs: dict[str, list[dict[str, Any]]] = {"alone": []}
    for name, _ in variants:
        runs[f"{name}/small"] = []
        runs[f"{name}/large"] = []
    plan = ["alone"] + [f"{name}/{size}" for name, _ in variants for size in ("small", "large")]
    settings = dict(variants)

    def session_key(sets: list[str]) -> tuple[str, ...]:  # settings that `init_ray` reads: need their own Ray session
        return tuple(x for x in sets if x.split("=", 1)[0] in SESSION_SETTINGS)

    current = session_key([])
    for rep in range(reps):
        k = rep % len(plan)
        order = plan[k:] + plan[:k]
        for what in order:
            if what == "alone":
                r = runner.decode_alone(n_large)
            else:
                name, size = what.split("/")
                with _Applied(settings[name]) as overrides:
                    if session_key(settings[name]) != current:
                        runner.restart_ray(small)
                        current = session_key(settings[name])
                    r = runner.run(small if size == "small" else large, n_small if size == "small" else n_large,
                                   f"pipe-{name}-{size}", extra=overrides)
            runs[what].append(r)
            print(f"[bench] pipeline rep {rep} {what}: {r['vps']:.2f} videos/s ({r['wall_s']:.1f}s)"
                  + (f", in-run {r['inrun_vps']:.2f}/s, first row {r['first_row_s']:.1f}s" if r.get("inrun_vps") and r.get("first_row_s") else ""), flush=True)
    alone = median([r["vps"] for r in runs["alone"]])
    cpu_alone = median([r["cpu"].get("decode-alone pool", 0.0) / r["n"] for r in runs["alone"]])
    cpu_alone_sys = median([r["cpu"].get("decode-alone pool (sys)", 0.0) / r["n"] for r in runs["alone"]])
    ray_idle_during_alone = median([_tot({k: v for k, v in r["cpu"].items() if not k.startswith(("decode-alone pool", "driver"))}) / r["wall_s"]
                                    for r in runs["alone"]])
    out_variants = {}
    for name, sets in variants:
        rs, rl = runs[f"{name}/small"], runs[f"{name}/large"]
        t_small = median([r["wall_s"] for r in rs])
        t_large = median([r["wall_s"] for r in rl])
        steady = (n_large - n_small) / (t_large - t_small) if t_large > t_small else float("nan")
        kinds = sorted({k for r in rs + rl for k in r["cpu"]})
        # CPU-seconds per video by process kind: marginal (large - small) per extra video
        cpu_marg = {k: (median([r["cpu"].get(k, 0.0) for r in rl]) - median([r["cpu"].get(k, 0.0) for r in rs])) / (n_large - n_small)
                    for k in kinds}
        inrun = median([r["inrun_vps"] for r in rl if r.get("inrun_vps")])
        wkinds = sorted({k for r in rl for k in r.get("cpu_per_video_window", {})})
        cpu_win = {k: median([r["cpu_per_video_window"].get(k, 0.0) for r in rl if r.get("cpu_per_video_window")]) for k in wkinds}
        out_variants[name] = {
            "settings": sets, "pipeline_large_vps": n_large / t_large, "pipeline_steady_vps": steady,
            "startup_per_run_s": t_large - n_large / steady if steady == steady else float("nan"),
            "first_commit_s": median([r["first_commit_s"] for r in rl if r["first_commit_s"] is not None]),
            "first_row_s": median([r["first_row_s"] for r in rl if r.get("first_row_s") is not None]),
            "inrun_vps": inrun, "overhead_inrun": 1 - inrun / alone if inrun == inrun else float("nan"),
            "overhead_steady": 1 - steady / alone if steady == steady else float("nan"),
            "overhead_incl_startup": 1 - (n_large / t_large) / alone,
            "cpu_per_video_pipeline": cpu_marg, "cpu_per_video_window": cpu_win,
            "cpu_overhead": 1 - cpu_alone / _tot(cpu_win) if _tot(cpu_win) > 0 else float("nan"),
        }
    return {
        "n_small": n_small, "n_large": n_large, "reps": reps, "shard_size": shard_size,
        "clips": "real clips, cycled" if reals else "generated 480p",
        "ray_init_s": runner.ray_init_s, "decode_alone_vps": alone, "cpu_per_video_alone": cpu_alone, "cpu_per_video_alone_sys": cpu_alone_sys,
        "ray_idle_cores_during_alone": ray_idle_during_alone, "overrides": runner.overrides,
        "variants": out_variants, "runs": runs, "load": {**load, "load_at_end": round(load1(), 2)},
    }


def report(p: dict[str, Any]) -> list[str]:
    """The pipeline overhead table and CPU breakdown (results key `pipeline`)."""
    lines: list[str] = []
    lines += ["", f"Pipeline vs decode alone, 2 CPUs, {p['clips']}, shards of {p['shard_size']} ({p['n_small']} and {p['n_large']} samples, "
                  f"{p['reps']} rep(s), medians). Decode alone (2 processes): **{fmt(p['decode_alone_vps'])} videos/s**, "
                  f"{p['cpu_per_video_alone']:.3f} CPU-s/video ({p.get('cpu_per_video_alone_sys', 0):.3f} kernel); ray.init {fmt(p['ray_init_s'], 1)} s (once).", "",
              "| variant | steady state: in-run rate (25-90% of rows) | overhead (target <= 15%) | steady state: large - small | overhead | "
              "whole run (incl. start-up) | overhead | start-up per run | first scored row | CPU-s/video (steady window) | CPU overhead |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in p["variants"].items():
        tot = _tot(v["cpu_per_video_window"])
        # the marginal (large - small) estimate needs a small run well past start-up: not in --quick
        marginal = (f"{fmt(v['pipeline_steady_vps'])} videos/s | {fmt(100 * v['overhead_steady'], 1)}%" if p["n_small"] >= 50
                    else "n/a (small run too short) | n/a")
        lines.append(f"| {name} | {fmt(v['inrun_vps'])} videos/s | **{fmt(100 * v['overhead_inrun'], 1)}%** | {marginal} | "
                     f"{fmt(v['pipeline_large_vps'])} videos/s | {fmt(100 * v['overhead_incl_startup'], 1)}% | "
                     f"{fmt(v['startup_per_run_s'], 1)} s | {fmt(v['first_row_s'], 1)} s | {tot:.3f} | {fmt(100 * v['cpu_overhead'], 1)}% |")
    lines.append("")
    for name, v in p["variants"].items():
        cpu = v["cpu_per_video_window"]
        lines.append(f"- {name} ({', '.join(v['settings']) or 'bench config'}): CPU-s per video by process (of which kernel), steady-state window: "
                     + ", ".join(f"{k} {x:.3f} ({min(x, cpu.get(k + ' (sys)', 0.0)):.3f})" for k, x in sorted(cpu.items(), key=lambda x: -x[1])
                                 if abs(x) >= 0.0005 and not k.endswith(" (sys)")))
    lines.append(f"- Idle Ray while decode-alone ran: {p['ray_idle_cores_during_alone']:.3f} cores.")
    return lines
