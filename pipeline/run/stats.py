"""Run counters shared by the stages: one small Ray actor per run, fed fire-and-forget.

Stages call a `Reporter` with counter deltas; the actor sums them and exports them through Ray's
metrics API (`ray.util.metrics`), which Ray serves to Prometheus on every node (see
infra/prometheus/). The driver polls `snapshot()` for the progress line. A counter that cannot be
reached never fails a stage: counters are observability, not correctness.

Exported as `vscore_<name>`, which Prometheus sees as `ray_vscore_<name>` (Ray's prefix; counters get
`_total`), each with a run_id label: rows_read, rows_scored, rows_ok, errors{stage}, rows_prefiltered,
prefilter_skips{condition} (rows the prefilter kept from the engine, in all and per failed condition),
engine_seconds (engine wall seconds summed over the rows it scored), output_tokens, prompt_tokens,
storage_retries{layer} (S3 requests sent again after a failed attempt, by botocore or s3fs; pipeline.storage) (counters)
and videos_per_s, output_tokens_per_s, eta_s, gpu_s_saved (gauges set by the driver).
Per-operator queue depths and task counts come from Ray Data's own `ray_data_*` metrics.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class RunStats:
    def __init__(self, run_id: str = "") -> None:
        from ray.util.metrics import Counter, Gauge

        self.counts: collections.Counter[str] = collections.Counter()
        self.started = time.time()
        tags = ("run_id",)
        self.tags = {"run_id": run_id}
        self.counters = {name: Counter(f"vscore_{name}", description=desc, tag_keys=tags) for name, desc in [
            ("rows_read", "samples read from shards"), ("rows_scored", "rows out of the scoring stage"),
            ("rows_ok", "rows scored with status ok"), ("output_tokens", "generated tokens"),
            ("prompt_tokens", "prompt tokens incl. video tokens"),
            ("rows_prefiltered", "rows the prefilter skipped (status skipped, never sent to the engine)")]}
        self.counters["engine_s"] = Counter("vscore_engine_seconds", description="engine seconds summed over the rows the engine scored",
                                            tag_keys=tags)
        self.errors = Counter("vscore_errors", description="error rows by stage", tag_keys=("run_id", "stage"))
        self.retries = Counter("vscore_storage_retries", description="S3 requests sent again after a failed attempt, by retry layer",
                               tag_keys=("run_id", "layer"))
        self.skips = Counter("vscore_prefilter_skips", description="rows skipped by the prefilter, by failed condition",
                             tag_keys=("run_id", "condition"))
        self.gauges = {name: Gauge(f"vscore_{name}", description=desc, tag_keys=tags) for name, desc in [
            ("videos_per_s", "rows scored per second since start"), ("output_tokens_per_s", "generated tokens per second"),
            ("eta_s", "estimated seconds to finish"),
            ("gpu_s_saved", "prefiltered rows x engine seconds per scored row (GPU time not spent)")]}

    def add(self, counts: dict[str, float]) -> None:
        self.counts.update(counts)
        for k, v in counts.items():
            if k in self.counters and v:
                self.counters[k].inc(v, tags=self.tags)
            elif k.startswith("errors_") and v:
                self.errors.inc(v, tags={**self.tags, "stage": k[len("errors_"):]})
            elif k.startswith("skipped:") and v:
                self.skips.inc(v, tags={**self.tags, "condition": k[len("skipped:"):]})
            elif k.startswith("storage_retries:") and v:
                self.retries.inc(v, tags={**self.tags, "layer": k[len("storage_retries:"):]})

    def set_gauges(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if k in self.gauges and v is not None:
                self.gauges[k].set(v, tags=self.tags)

    def snapshot(self) -> dict[str, Any]:
        return {"elapsed_s": time.time() - self.started, **self.counts}


def create(name: str, run_id: str = "") -> Any:
    """The run's counters actor, pinned to the driver's node (hard affinity): placed anywhere, it could land on
    a node that is later lost (a preempted GPU node) and take the run's counters and progress with it. The
    driver's node is the one node whose loss ends the run anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return RunStats.options(name=name, get_if_exists=True, scheduling_strategy=here).remote(run_id)  # type: ignore[attr-defined]


def progress(s: dict[str, Any], total_shards: int) -> dict[str, Any]:
    """Rates and ETA from a snapshot: total rows estimated from rows per shard read so far."""
    el = max(s.get("elapsed_s", 0.0), 1e-9)
    done = s.get("rows_scored", 0)
    shards = s.get("shards_read", 0)
    est_total = (s.get("rows_read", 0) + s.get("rows_skipped", 0)) / shards * total_shards if shards else None
    rate = done / el
    remaining = max(0.0, est_total - s.get("rows_skipped", 0) - done) if est_total is not None else None
    prefiltered = s.get("rows_prefiltered", 0)
    return {"rows_scored": done, "videos_per_s": rate, "output_tokens_per_s": s.get("output_tokens", 0) / el,
            "errors": sum(v for k, v in s.items() if k.startswith("errors_")),
            "storage_retries": sum(v for k, v in s.items() if k.startswith("storage_retries:")),
            "eta_s": remaining / rate if remaining is not None and rate > 0 else None, "est_total": est_total,
            "prefiltered": prefiltered, "gpu_s_saved": gpu_seconds_saved(prefiltered, s.get("engine_s", 0.0), s.get("engine_rows", 0))}


def storage_retries(where: str) -> dict[str, float]:
    """This process's storage retries since its last report (`pipeline.storage.take_retries`) as counter deltas:
    `storage_retries:<layer>` (botocore, s3fs) and `storage_retries@<where>` (the stage that made them)."""
    from pipeline.storage import take_retries

    return retry_counts(take_retries(), where)


def retry_counts(by_layer: dict[str, int], where: str) -> dict[str, float]:
    """Retries by layer made by the stage `where`, as the run's counter keys (`storage_retries:<layer>`,
    `storage_retries@<where>`)."""
    out: dict[str, float] = {f"storage_retries:{layer}": n for layer, n in by_layer.items()}
    if by_layer:
        out[f"storage_retries@{where}"] = sum(by_layer.values())
    return out


def retry_summary(counts: dict[str, Any]) -> dict[str, Any]:
    """The summary's `storage_retries` from summed counter deltas: total, per layer and per stage."""
    layers = {k.split(":", 1)[1]: int(v) for k, v in counts.items() if k.startswith("storage_retries:") and v}
    where = {k.split("@", 1)[1]: int(v) for k, v in counts.items() if k.startswith("storage_retries@") and v}
    return {"total": sum(layers.values()), "by_layer": layers, "by_stage": where}


def gpu_seconds_saved(skipped: int, engine_s: float, engine_rows: int) -> float | None:
    """GPU time the prefilter saved: skipped rows x the run's measured engine seconds per scored video
    (None before the engine has scored a row)."""
    return skipped * engine_s / engine_rows if engine_rows else None


class Reporter:
    """Looks the stats actor up lazily inside a worker and sends counters without waiting."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._handle: Any = None

    def __call__(self, counts: dict[str, float]) -> None:
        if not self.name or not counts:
            return
        try:
            if self._handle is None:
                self._handle = ray.get_actor(self.name)
            self._handle.add.remote(counts)
        except Exception:  # noqa: BLE001
            self._handle = None
