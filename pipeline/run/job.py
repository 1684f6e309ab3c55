"""`vscore score`: wire the stages on Ray Data and run them.

    shard list ─(read tasks)→ samples ─(decode actors, CPU)→ frames ─(score actors, GPU)→ rows ─→ Parquet

Scheduling, backpressure and task retries are Ray Data's; this module only declares the stages and
their resources, then writes a small JSON summary next to the output.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from typing import Any

import ray
from ray.data.exceptions import ExecutionTimeoutError

from pipeline.run import resume, stats
from pipeline.config import ScoreConfig
from pipeline.errors import CapacityError, StorageAccessError, UsageError
from pipeline.stages.decode import DecodeStage
from pipeline.stages.score import ScoreStage, inflight_root
from pipeline.run.plan import ResourcePlan, alive_node_resources, make_plan, unplaceable
from pipeline.run.resume import shard_manifest_dir
from pipeline.storage import filesystem
from pipeline.stages.manifest import plan_blocks
from pipeline.stages.read import list_shards, read_shards_batch, shard_group_of
from pipeline.stages.sink import CommittedParquetSink, quarantine_url

log = logging.getLogger("vscore")

SUMMARY_DIR = "_vscore"  # pyarrow/duckdb dataset discovery skips names starting with "_"

# CPUs reserved per sink write task (Ray's default is 1). A write task turns a few dozen small result rows
# into Parquet + a commit marker: milliseconds of CPU. With a whole CPU each, writes cannot be scheduled while
# the actors leave less than one CPU free (the demo and any 2-core box): they then wait until the decode actors
# are released at the end, so nothing is committed during the run (a crash loses it all) and the tail grows.
# A small reservation lets them run while decoding goes on (measured: docs/performance.md).
WRITE_NUM_CPUS = 0.1

# How long an idle Ray task worker is kept before Ray may kill it (Ray's default: 1 s, whenever the node
# runs more worker processes than CPUs, which the actors alone already do). With the default, nearly every
# read and write task started a new Python worker (interpreter, ray, ray.data and the pipeline imports:
# ~2.5 s of CPU) and that churn was the largest steady-state cost on 2 cores (write tasks + worker starts
# ~0.07 CPU-s per video, a 5 s clip decodes in ~0.24). Kept for 10 minutes, the same few workers serve every
# read/write task of a run: a slow run (the 60-minute soak at 1.5 rows/s) has gaps of 2-8 minutes between
# read tasks, and with 60 s Ray recycled the read worker after each gap (a new worker imports the pipeline
# again, ~320 MiB, while the old one exits). Idle workers hold their memory for those 10 minutes at most;
# their number is the most tasks that ran at once. Applies to the local cluster `init_ray` starts; on a
# cluster set it in `ray start --system-config` or RAY_idle_worker_killing_time_threshold_ms (docs/cluster.md).
IDLE_WORKER_KEEP_MS = 600_000

# Task records the local cluster's GCS keeps for `ray list tasks` and the dashboard (Ray's default: 100,000).
# Every decode and scoring batch is an actor task, so an overnight run reaches any cap; 10,000 is enough to
# inspect the latest minutes and bounds the GCS's share of the memory an overnight run holds.
TASK_EVENTS_KEPT = 10_000

_STARTED_LOCAL_RAY = False  # set when init_ray started a one-node local Ray (not a cluster connection)


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
             include_dashboard=False, runtime_env=runtime_env, log_to_driver=True,
             _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS,
                             "task_events_max_num_task_in_gcs": TASK_EVENTS_KEPT})
    global _STARTED_LOCAL_RAY
    _STARTED_LOCAL_RAY = True


def build_dataset(cfg: ScoreConfig, shards: list[str], stats_name: str | None = None,
                  skip: dict[str, list[str]] | None = None, all_shards: list[str] | None = None,
                  plan: ResourcePlan | None = None, invocation: str = "local") -> "ray.data.Dataset":
    """The lazy Ray Data pipeline for `shards`; nothing runs until it is consumed.

    `skip` maps a shard to row ids already committed (resume); `all_shards` fixes shard-group numbering
    when some shards were skipped entirely."""
    plan = plan or make_plan(cfg, ray.cluster_resources())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    ctx.execution_no_progress_timeout_s = cfg.ray.no_progress_timeout_s or -1
    locality = cfg.ray.actor_locality
    ctx.execution_options.actor_locality_enabled = (not _STARTED_LOCAL_RAY) if locality is None else locality
    index = {s: i for i, s in enumerate(all_shards or shards)}
    skip = skip or {}
    items = [{"shard": s, "shard_group": shard_group_of(index[s], cfg.output.shards_per_group), "skip": skip.get(s, [])}
             for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # 1. read: one task per shard, streaming samples out in small blocks (I/O bound: little CPU).
    ds = ds.map_batches(read_shards_batch, fn_kwargs={"cfg": cfg.input, "stats_name": stats_name,
                                                      "manifest_dir": shard_manifest_dir(cfg), "manifest_storage": cfg.output.storage},
                        batch_size=1, num_cpus=cfg.input.read_num_cpus, batch_format="numpy",
                        # Never fused into the decode actors (Ray Data fuses a task map into the next actor map
                        # whenever their remote args match, e.g. decode.num_cpus == input.read_num_cpus): reads
                        # stay I/O tasks of their own with their own concurrency, the same plan at every
                        # setting. A remote-args function is the documented bar to fusion; it sets nothing new.
                        ray_remote_args_fn=_read_remote_args(cfg.input.read_num_cpus))
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    # 2. decode: CPU actors; video bytes in, uint8 frames out (bytes dropped here), in the patch layout when the
    # engine takes it (decode.patchify): the scoring actor then does no per-pixel work.
    d = cfg.decode
    ds = ds.map_batches(DecodeStage, fn_constructor_args=(d, cfg.prefilter, cfg.decode_patchify()), batch_size=d.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(min_size=plan.decode_actors_min, max_size=plan.decode_actors_max),
                        num_cpus=d.num_cpus, memory=d.memory)
    # 3. score: accelerator actors owning one engine each. Both pools run with a minimum of 1: a cluster smaller
    # than planned (or one that lost a node) runs with what fits; a fixed size waits for a scale-up that a
    # static cluster never does.
    e = cfg.engine
    # `batches_in_flight` calls run concurrently in each actor (threads; the engine is thread-safe and
    # shares one running engine batch between them), so the engine never drains between batches.
    ds = ds.map_batches(ScoreStage, fn_constructor_args=(cfg, stats_name, None, invocation), batch_size=e.batch_size,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(
                            min_size=1, max_size=plan.engine_actors, max_tasks_in_flight_per_actor=e.batches_in_flight,
                            max_concurrent_calls_per_actor=e.batches_in_flight,
                            enable_true_multi_threading=e.batches_in_flight > 1),
                        num_gpus=plan.gpus_per_engine or None, num_cpus=e.num_cpus, resources=dict(e.resources) or None,
                        # a dead scoring actor is restarted and its batch retried, a bounded number of times
                        max_restarts=e.max_restarts, max_task_retries=e.max_task_retries)
    return ds


def _read_remote_args(num_cpus: float):
    def fn() -> dict[str, Any]:
        return {"num_cpus": num_cpus}

    return fn


def physical_operators(ds: "ray.data.Dataset") -> list[str]:
    """Names of the operators Ray Data will run for `ds`, source first (fused ones joined by '->')."""
    from ray.data._internal.logical.optimizers import get_execution_plan

    plan = get_execution_plan(ds._logical_plan)
    plan = plan[0] if isinstance(plan, tuple) else plan
    names, op = [], plan.dag
    while op is not None:
        names.append(op.name)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return names[::-1]


def _progress(stats_handle: Any, every_s: float, stop: threading.Event, total_shards: int) -> None:
    """Log a progress line every `every_s` seconds and export the rate/ETA gauges."""
    while not stop.wait(every_s):
        try:
            p = stats.progress(ray.get(stats_handle.snapshot.remote(), timeout=10), total_shards)
            stats_handle.set_gauges.remote(p)
        except Exception:  # noqa: BLE001
            continue
        eta = f"{p['eta_s'] / 60:.1f} min" if p["eta_s"] is not None else "?"
        total = f"/~{p['est_total']:.0f}" if p["est_total"] is not None else ""
        skip = (f", {p['prefiltered']} skipped by the prefilter"
                + (f" (~{p['gpu_s_saved']:.0f} GPU-s saved)" if p["gpu_s_saved"] is not None else "")) if p["prefiltered"] else ""
        retries = f", {p['storage_retries']:.0f} storage retries" if p["storage_retries"] else ""
        log.info("progress: %d%s rows scored, %.2f videos/s, %.1f output tok/s, %d errors%s%s, ETA %s",
                 p["rows_scored"], total, p["videos_per_s"], p["output_tokens_per_s"], p["errors"], skip, retries, eta)


def _fold_state(cfg: ScoreConfig, every_s: float, stop: threading.Event) -> None:
    """Fold new commit markers and finished shards' manifests into the compact checkpoint while the run goes
    on, so neither the end-of-run summary nor a rerun after a crash has to load one marker per write task."""
    while not stop.wait(every_s):
        try:
            st = resume.load_state(cfg)
            resume.consolidate(cfg, st)
            if cfg.output.compact:  # small committed files -> files near output.target_file_mb, atomically
                from pipeline.run.compact import compact

                compact(cfg, st, final=False, in_ray=True)
        except Exception as e:  # noqa: BLE001 - the next fold (or the end of the run) tries again
            log.warning("state fold failed (retried later): %s", e)


def run(cfg: ScoreConfig, progress_every_s: float = 30.0, retry_errors: bool = False) -> dict[str, Any]:
    """Run the scoring job to completion (resuming a previous run of the same config and output) and
    return (and write) its summary. `retry_errors`: first uncommit the run's error rows of a retryable stage
    (read, decode, engine) so they are scored again (`pipeline.run.retry`)."""
    cfg = absolute_paths(cfg)  # nothing below (nor in workers, whose cwd differs) depends on the cwd
    run_id = cfg.resolved_run_id()
    stats.storage_retries("driver")  # this process's retries before this run are not this run's
    if cfg.input.manifest:  # blocks of manifest rows play the part of shards from here on
        all_shards = plan_blocks(list_shards(cfg.input.manifest, cfg.input.storage), cfg.input)
        if not all_shards:
            raise UsageError(f"input.manifest={cfg.input.manifest!r} holds no rows")
    else:
        all_shards = list_shards(cfg.input.shards, cfg.input.storage)
    if not all_shards:
        raise UsageError(f"no shards match input.shards={cfg.input.shards!r}")
    out_fs, out_root = filesystem(cfg.output.path, cfg.output.storage)
    if out_fs.isfile(out_root):
        raise UsageError(f"output.path {cfg.output.path} is a file; expected a folder (new, or holding earlier runs)")
    resume.guard_fingerprint(cfg)
    retried = None
    if retry_errors:
        from pipeline.run.retry import prepare_retry

        retried = prepare_retry(cfg)["rows"]
    state = resume.load_state(cfg)
    resume.remove_uncommitted(cfg, state)
    resume.consolidate(cfg, state)  # markers of earlier invocations -> the compact checkpoint
    resume.prune_retired(cfg, state)
    todo = [s for s in all_shards if not state.shard_done(s)]
    skip = {s: state.committed_by_shard[s] for s in todo if s in state.committed_by_shard}
    log.info("run %s: %d shards (%d already complete, %d committed rows) -> %s (engine %s, model %s, template %s)",
             run_id, len(all_shards), len(all_shards) - len(todo), state.committed_rows, cfg.output.path,
             cfg.engine.kind, cfg.engine.model, cfg.prompt.template)
    t0 = time.time()
    counters: dict[str, Any] = {}
    if todo:
        init_ray(cfg)
        plan = make_plan(cfg, ray.cluster_resources())
        for line in plan.lines():
            log.info("plan: %s", line)
        if cfg.ray.capacity_timeout_s is not None:
            missing = unplaceable(cfg, plan, alive_node_resources())
            if missing:
                raise CapacityError(f"the plan does not fit this cluster: {'; '.join(missing)} (set ray.capacity_timeout_s=null "
                                    "to wait for an autoscaler)")
        invocation = uuid.uuid4().hex[:12]
        _remove_inflight(cfg)  # an earlier invocation's markers say nothing about this one
        stats_name = f"vscore-stats-{invocation}"
        handle = stats.create(stats_name, run_id)
        registry = None
        if cfg.cache.dedup:
            from pipeline.stages.score_cache import start_registry, store_is_empty

            registry = start_registry(invocation, warm=not store_is_empty(cfg))
        stop = threading.Event()
        ticker = threading.Thread(target=_progress, args=(handle, progress_every_s, stop, len(todo)), daemon=True)
        ticker.start()
        folder = threading.Thread(target=_fold_state, args=(cfg, cfg.output.state_fold_every_s, stop), daemon=True)
        folder.start()
        ds = build_dataset(cfg, todo, stats_name, skip=skip, all_shards=all_shards, plan=plan, invocation=invocation)
        sink = CommittedParquetSink(cfg.output, run_id, min_rows_per_write=cfg.output.min_rows_per_file)
        lost: list[str] = []
        watchdog = _CapacityWatchdog(cfg, plan, stop, lost)
        try:
            with watchdog.armed():
                ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_NUM_CPUS})
        except (_CapacityLost, KeyboardInterrupt):
            if not lost:
                raise
            done = resume.load_state(cfg).committed_rows
            raise CapacityError(f"run {run_id} stopped: {lost[0]}; {done} rows committed under {cfg.output.path}; "
                                "rerun the same command to resume once the cluster has the capacity") from None
        except ExecutionTimeoutError:
            # nothing moved for ray.no_progress_timeout_s: e.g. a lost node's actors restarted where there is no room
            stop.set()
            done = resume.load_state(cfg).committed_rows
            raise CapacityError(f"run {run_id} stopped: no progress for {cfg.ray.no_progress_timeout_s:g} s (ray.no_progress_timeout_s; "
                                f"a lost node's work waiting for room on the surviving nodes?); {done} rows committed under "
                                f"{cfg.output.path}; rerun the same command to resume") from None
        except ray.exceptions.OutOfMemoryError as exc:
            # Ray's memory monitor killed workers and Ray Data gave up (an actor killed in its constructor fails
            # the execution at once; tasks and actor calls are retried): one line, not a Ray traceback.
            stop.set()
            done = resume.load_state(cfg).committed_rows
            first = " ".join(str(exc).split("\n")[0].split())
            raise CapacityError(f"run {run_id} stopped: Ray's memory monitor killed workers ({first}); {done} rows committed under "
                                f"{cfg.output.path}; lower decode.batch_size or decode.actors (or give the nodes more memory) and "
                                "rerun the same command to resume") from None
        except NODE_LOSS_ERRORS as exc:
            # Ray Data gives up on a map task whose actor sat on a lost node once its retries are spent (an actor
            # that cannot be restarted anywhere makes every retry fail at once): one line, not a Ray traceback.
            if cfg.ray.capacity_timeout_s is None:
                raise
            stop.set()
            why = _lost_capacity(cfg, plan)
            done = resume.load_state(cfg).committed_rows
            where = f" and {why}" if why else " (the surviving nodes can host every actor kind)"
            raise CapacityError(f"run {run_id} stopped: a node was lost ({type(exc).__name__}){where}; {done} rows committed "
                                f"under {cfg.output.path}; rerun the same command to resume"
                                f"{' once the cluster has the capacity' if why else ''}") from None
        except Exception as exc:
            denied = refused_write(exc)
            if denied is None:
                raise
            done = resume.load_state(cfg).committed_rows
            raise StorageAccessError(f"run {run_id} stopped: {denied}; {done} rows committed; make the output writable (or "
                                     "choose another output.path) and rerun the same command to resume") from None
        finally:
            stop.set()
            folder.join()
        try:
            counters = ray.get(handle.snapshot.remote(), timeout=30)
            ray.kill(handle)
        except Exception as exc:  # noqa: BLE001 - counters are observability; the committed rows are the result
            log.warning("run counters unavailable at the end (%s); the summary counts committed rows only", exc)
        if registry is not None:
            try:
                ray.kill(registry)
            except Exception:  # noqa: BLE001 - gone with a lost node: nothing to stop
                pass
        _remove_inflight(cfg)  # markers of work that was being generated when an actor died
    wall = time.time() - t0
    final = resume.load_state(cfg)
    resume.consolidate(cfg, final)
    if cfg.output.compact:
        from pipeline.run.compact import compact

        compact(cfg, final, in_ray=ray.is_initialized())
    counters = dict(counters)
    # the write tasks' retries come back with their results; the driver's own are counted here
    written = stats.retry_counts(sink.result.get("storage_retries", {}), "write") if todo else {}
    for k, v in [*written.items(), *stats.storage_retries("driver").items()]:
        counters[k] = counters.get(k, 0) + v
    summary = summarize(cfg, run_id, all_shards, wall, counters, final, resumed_rows=state.committed_rows)
    if retried is not None:
        summary["retried"] = retried
    out_fs, out_root = filesystem(cfg.output.path, cfg.output.storage)
    out_fs.makedirs(f"{out_root}/{SUMMARY_DIR}", exist_ok=True)
    out_fs.pipe_file(f"{out_root}/{SUMMARY_DIR}/summary-{run_id}.json", json.dumps(summary, indent=2).encode())
    log.info("done: %d rows in, %d ok, %d errors, %d skipped by the prefilter, %d storage retries%s", summary["rows_in"],
             summary["ok"], summary["errors"], summary["skipped"], summary["storage_retries"]["total"], "" if summary["prefilter"]["gpu_s_saved"] is None else
             f" (~{summary['prefilter']['gpu_s_saved']:.1f} GPU-s saved at {summary['prefilter']['engine_s_per_video']:.3f} s per video)")
    return summary


def _remove_inflight(cfg: ScoreConfig) -> None:
    """Delete the run's in-flight markers (paths are absolute: see `absolute_paths`). A failure here is
    logged, never raised: the markers belong to one invocation and the next one removes them too."""
    try:
        fs, root = filesystem(inflight_root(cfg), cfg.output.storage)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    except (OSError, ValueError) as exc:
        log.warning("could not remove in-flight markers under %s: %s", inflight_root(cfg), exc)


def absolute_paths(cfg: ScoreConfig) -> ScoreConfig:
    """`cfg` with local output paths made absolute (URLs with a scheme are kept). A relative path would be
    resolved against each process's cwd: the driver's (under `ray job submit`, a runtime-env folder that can
    vanish with a node) and the workers' (their own runtime-env folders) differ. Not row-affecting."""
    out = cfg.output
    fixes = {}
    for name in ("path", "quarantine_path"):
        value = getattr(out, name)
        if value and "://" not in value and not os.path.isabs(value):
            fixes[name] = os.path.abspath(value)
    if not fixes:
        return cfg
    return cfg.model_copy(update={"output": out.model_copy(update=fixes)})


def refused_write(exc: BaseException) -> str | None:
    """The message of a PermissionError (a refused PUT, named by the sink) anywhere in `exc`'s chain, as Ray
    Data re-raises a task's error (a RayTaskError that is also an instance of the cause's class)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, PermissionError):
            return " ".join(str(cause).split())
        if isinstance(e, PermissionError) and not isinstance(e, ray.exceptions.RayError):
            return " ".join(str(e).split())
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    # a UDF error reaches the driver wrapped (UserCodeException) with the remote traceback as text only
    import re

    m = re.search(r"PermissionError: ((?:PUT|DELETE) \S+ refused: [^\n]+)", str(exc))
    return " ".join(m.group(1).split()) if m else None


NODE_LOSS_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(ray.exceptions, n) for n in ("ActorUnavailableError", "ActorDiedError", "NodeDiedError", "ObjectLostError",
                                         "OwnerDiedError", "ObjectReconstructionFailedError", "WorkerCrashedError",
                                         "LocalRayletDiedError") if hasattr(ray.exceptions, n))


def _lost_capacity(cfg: ScoreConfig, plan: ResourcePlan, wait_s: float = 45.0) -> str:
    """What no alive node can host any more, once Ray has noticed the lost node (its health checks take a few
    seconds to tens of seconds); '' when every actor kind still fits."""
    deadline = time.time() + wait_s
    while True:
        try:
            missing = unplaceable(cfg, plan, alive_node_resources())
        except Exception:  # noqa: BLE001
            missing = []
        if missing or time.time() >= deadline:
            return "; ".join(missing)
        time.sleep(3)


class _CapacityLost(BaseException):
    """Raised in the driver's main thread by the capacity watchdog (through SIGUSR1)."""


class _CapacityWatchdog:
    """Stops a run whose cluster has had no node able to host one of its actor kinds (lost with a node) for
    `ray.capacity_timeout_s`: Ray would restart the lost actors once such a node comes back, and on a static
    cluster that never happens, so the run would wait forever. Polls the alive nodes every few seconds; on
    timeout it records the reason and interrupts the run (SIGUSR1 to the main thread, where `vscore score` and
    `jobs/score.py` run it; a run started from another thread only gets the reason logged)."""

    POLL_S = 3.0

    def __init__(self, cfg: ScoreConfig, plan: ResourcePlan, stop: threading.Event, lost: list[str]) -> None:
        self.cfg, self.plan, self.stop, self.lost = cfg, plan, stop, lost

    def _watch(self) -> None:
        timeout = self.cfg.ray.capacity_timeout_s
        since: float | None = None
        while not self.stop.wait(self.POLL_S):
            try:
                missing = unplaceable(self.cfg, self.plan, alive_node_resources())
            except Exception:  # noqa: BLE001 - GCS briefly unreachable: ask again
                continue
            if not missing:
                if since is not None:
                    log.info("capacity is back: every actor kind of the plan can be placed again")
                since = None
                continue
            if since is None:
                since = time.time()
                log.warning("capacity lost: %s; stopping the run in %.0f s unless it comes back", "; ".join(missing), timeout)
            elif time.time() - since >= timeout:
                self.lost.append(f"for {timeout:g} s {'; '.join(missing)}")
                if self._main_handler:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                else:  # run() called outside the main thread (a library caller): it cannot be interrupted safely
                    log.error("run cannot continue: %s (stop it; a rerun resumes)", self.lost[0])
                return

    _main_handler = False

    def armed(self) -> "Any":
        import contextlib

        @contextlib.contextmanager
        def ctx():
            if self.cfg.ray.capacity_timeout_s is None:
                yield
                return
            previous = None
            if threading.current_thread() is threading.main_thread():
                def raise_lost(signum: int, frame: Any) -> None:
                    raise _CapacityLost()

                previous = signal.signal(signal.SIGUSR1, raise_lost)
                self._main_handler = True
            t = threading.Thread(target=self._watch, daemon=True, name="vscore-capacity")
            t.start()
            try:
                yield
            finally:
                self.stop.set()
                if previous is not None:
                    signal.signal(signal.SIGUSR1, previous)

        return ctx()


def summarize(cfg: ScoreConfig, run_id: str, shards: list[str], wall_s: float, counters: dict[str, Any],
              state: "resume.ResumeState", resumed_rows: int = 0) -> dict[str, Any]:
    """Totals over everything committed for this run (this invocation and earlier ones)."""
    totals = state.totals()
    errors = sum(totals["errors_by_stage"].values())
    skipped = totals["skipped"]
    rows_in = sum(state.shard_size(s) for s in shards)
    new_rows = totals["rows"] - resumed_rows
    per_video = totals["engine_s"] / totals["engine_rows"] if totals["engine_rows"] else None
    saved = stats.gpu_seconds_saved(skipped, totals["engine_s"], totals["engine_rows"])
    return {
        "run_id": run_id, "output": cfg.output.path, "quarantine": quarantine_url(cfg.output), "shards": len(shards),
        "rows_in": rows_in, "rows_out": totals["rows"], "ok": totals["rows"] - errors - skipped, "errors": errors,
        "skipped": skipped, "from_cache": totals.get("from_cache", 0), "duplicates": totals.get("duplicates", 0),
        "prefilter": {"expression": cfg.prefilter.expression(), "skipped": skipped, "skip_reasons": totals["skip_reasons"],
                      "engine_s_per_video": round(per_video, 4) if per_video is not None else None,
                      "gpu_s_saved": round(saved, 2) if saved is not None else None},
        "errors_by_stage": totals["errors_by_stage"], "parse_modes": totals["parse_modes"], "rows_this_invocation": new_rows, "rows_resumed": resumed_rows,
        "wall_s": round(wall_s, 2), "videos_per_s": round(new_rows / wall_s, 3) if wall_s > 0 and new_rows else None,
        "output_tokens": totals["output_tokens"], "prompt_tokens": int(counters.get("prompt_tokens", 0)),
        # this invocation's S3 retries (counters of the live run, like prompt_tokens: they describe how the storage
        # behaved during this invocation, not the rows, so they are not carried in commit markers across resumes)
        "storage_retries": stats.retry_summary(counters),
        "engine": cfg.engine.kind, "model": cfg.engine.model, "template": cfg.prompt.template,
        "config_fingerprint": cfg.scoring_fingerprint(),
    }
