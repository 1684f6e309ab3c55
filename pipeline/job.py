"""`vscore score`: wire the stages on Ray Data and run them.

    shard list ─(read tasks)→ samples ─(decode actors, CPU)→ frames ─(score actors, GPU)→ rows ─→ Parquet

Scheduling, backpressure and task retries are Ray Data's; this module only declares the stages and
their resources, then writes a small JSON summary next to the output.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import pyarrow.dataset as pads
import ray

from pipeline import stats
from pipeline.config import ScoreConfig
from pipeline.decode import DecodeStage
from pipeline.score_stage import ScoreStage
from pipeline.shards import filesystem, list_shards, read_shards_batch, shard_group_of

log = logging.getLogger("vscore")

SUMMARY_DIR = "_vscore"  # pyarrow/duckdb dataset discovery skips names starting with "_"


def init_ray(cfg: ScoreConfig) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(cfg.ray.env_vars)} if cfg.ray.env_vars else None
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    # A throwaway local cluster: no token auth file in ~/.ray, no usage stats.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
             include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)


def build_dataset(cfg: ScoreConfig, shards: list[str], stats_name: str | None = None) -> "ray.data.Dataset":
    """The lazy Ray Data pipeline for `shards`; nothing runs until it is consumed."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    items = [{"shard": s, "shard_group": shard_group_of(i, cfg.output.shards_per_group)} for i, s in enumerate(shards)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # 1. read: one task per shard, streaming samples out in small blocks (I/O bound: little CPU).
    ds = ds.map_batches(read_shards_batch, fn_kwargs={"cfg": cfg.input, "stats_name": stats_name}, batch_size=1,
                        num_cpus=cfg.input.read_num_cpus, batch_format="default")
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    # 2. decode: CPU actors; video bytes in, uint8 frames out (bytes dropped here).
    d = cfg.decode
    ds = ds.map_batches(DecodeStage, fn_constructor_args=(d,), batch_size=d.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(min_size=d.min_actors or d.actors, max_size=d.actors),
                        num_cpus=d.num_cpus)
    # 3. score: accelerator actors owning one engine each.
    e = cfg.engine
    ds = ds.map_batches(ScoreStage, fn_constructor_args=(cfg, stats_name), batch_size=e.batch_size,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=e.actors,
                        max_tasks_in_flight_per_actor=e.batches_in_flight),
                        num_gpus=e.num_gpus if e.num_gpus > 0 else None, num_cpus=e.num_cpus)
    return ds


def _progress(stats_handle: Any, every_s: float, stop: threading.Event) -> None:
    last = 0.0
    while not stop.wait(every_s):
        try:
            s = ray.get(stats_handle.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001
            continue
        done = s.get("rows_scored", 0)
        el = max(s["elapsed_s"], 1e-9)
        errs = sum(v for k, v in s.items() if k.startswith("errors_"))
        log.info("progress: %d rows scored (%.2f videos/s, %.1f output tok/s), %d errors", done, done / el,
                 s.get("output_tokens", 0) / el, errs)
        last = done
    del last


def run(cfg: ScoreConfig, progress_every_s: float = 30.0) -> dict[str, Any]:
    """Run the scoring job to completion and return (and write) its summary."""
    run_id = cfg.resolved_run_id()
    shards = list_shards(cfg.input.shards, cfg.input.storage)
    if not shards:
        raise SystemExit(f"no shards match {cfg.input.shards!r}")
    init_ray(cfg)
    stats_name = f"vscore-stats-{uuid.uuid4().hex[:8]}"
    handle = stats.create(stats_name)
    log.info("run %s: %d shards -> %s (engine %s, model %s, template %s)", run_id, len(shards), cfg.output.path,
             cfg.engine.kind, cfg.engine.model, cfg.prompt.template)
    stop = threading.Event()
    ticker = threading.Thread(target=_progress, args=(handle, progress_every_s, stop), daemon=True)
    ticker.start()
    t0 = time.time()
    ds = build_dataset(cfg, shards, stats_name)
    out_fs, out_root = filesystem(cfg.output.path, cfg.output.storage)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pa_fs = PyFileSystem(FSSpecHandler(out_fs))
    try:
        ds.write_parquet(out_root, partition_cols=cfg.output.partition_cols or None, filesystem=pa_fs)
    finally:
        stop.set()
    wall = time.time() - t0
    counters = ray.get(handle.snapshot.remote())
    ray.kill(handle)
    summary = summarize(cfg, run_id, shards, wall, counters)
    out_fs.makedirs(f"{out_root}/{SUMMARY_DIR}", exist_ok=True)
    with out_fs.open(f"{out_root}/{SUMMARY_DIR}/summary-{run_id}.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def summarize(cfg: ScoreConfig, run_id: str, shards: list[str], wall_s: float, counters: dict[str, Any]) -> dict[str, Any]:
    """Counts read back from the written dataset (the truth), plus the stages' counters."""
    out_fs, out_root = filesystem(cfg.output.path, cfg.output.storage)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    dset = pads.dataset(out_root, format="parquet", partitioning="hive", filesystem=PyFileSystem(FSSpecHandler(out_fs)))
    cols = ["status", "error_stage", "parse_mode"]
    filt = (pads.field("run_id") == run_id) if "run_id" in dset.schema.names else None
    table = dset.to_table(columns=cols, filter=filt)
    statuses = table.column("status").to_pylist()
    stages = table.column("error_stage").to_pylist()
    modes = table.column("parse_mode").to_pylist()
    errors_by_stage: dict[str, int] = {}
    for st, stage in zip(statuses, stages):
        if st != "ok":
            errors_by_stage[stage or "unknown"] = errors_by_stage.get(stage or "unknown", 0) + 1
    parse_modes: dict[str, int] = {}
    for st, m in zip(statuses, modes):
        if st == "ok":
            parse_modes[m or "none"] = parse_modes.get(m or "none", 0) + 1
    rows_out = len(statuses)
    return {
        "run_id": run_id, "output": cfg.output.path, "shards": len(shards),
        "rows_in": int(counters.get("rows_read", 0)), "rows_out": rows_out,
        "ok": rows_out - sum(errors_by_stage.values()), "errors": sum(errors_by_stage.values()),
        "errors_by_stage": errors_by_stage, "parse_modes": parse_modes,
        "wall_s": round(wall_s, 2), "videos_per_s": round(rows_out / wall_s, 3) if wall_s > 0 else None,
        "output_tokens": int(counters.get("output_tokens", 0)), "prompt_tokens": int(counters.get("prompt_tokens", 0)),
        "engine": cfg.engine.kind, "model": cfg.engine.model, "template": cfg.prompt.template,
        "config_fingerprint": cfg.scoring_fingerprint(),
    }
