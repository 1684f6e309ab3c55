"""The resource plan: how many actors of each stage to run on this cluster, computed in one place and
printed at start.

- scoring actors: `engine.actors`, or with 'auto' the cluster's GPUs / GPUs per actor (GPUs per actor is
  `tensor_parallel_size` for vLLM); on a CPU-only cluster, 1;
- decode actors: `decode.actors`, or with 'auto' `decode.actors_per_engine` x scoring actors, capped by
  the CPUs left after the scoring actors and a reserve for read tasks (and by the cluster's `memory`
  resource / `decode.memory`); the pool autoscales between
  `decode.min_actors` (default 1) and that number;
- both actor pools have a minimum of 1 and the plan's number as maximum, so a cluster that is smaller than
  planned (at start, or after losing a node) runs with what fits instead of waiting for a scale-up;
- read tasks take `input.read_num_cpus` each; Ray Data schedules as many as fit.

`unplaceable` checks the plan against the alive nodes: an actor that no single node can host (not enough
CPUs/GPUs on any node, or no node offering its custom resources, `engine.resources`) is named in one line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline.config import ScoreConfig


@dataclasses.dataclass
class ResourcePlan:
    cluster_cpus: float
    cluster_gpus: float
    engine_actors: int
    gpus_per_engine: float
    cpus_per_engine: float
    decode_actors_min: int
    decode_actors_max: int
    cpus_per_decode: float
    read_cpus_per_task: float
    notes: list[str]
    memory_per_decode: float = 0.0  # bytes of Ray's memory resource per decode actor (decode.memory; 0 = none)

    def lines(self) -> list[str]:
        out = [
            f"cluster: {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs",
            f"score:  {self.engine_actors} actor(s) x ({self.gpus_per_engine:g} GPU, {self.cpus_per_engine:g} CPU)",
            f"decode: {self.decode_actors_min}..{self.decode_actors_max} actor(s) x {self.cpus_per_decode:g} CPU"
            + (f", {_gib(self.memory_per_decode)} memory" if self.memory_per_decode else ""),
            f"read:   tasks x {self.read_cpus_per_task:g} CPU",
        ]
        return out + [f"note: {n}" for n in self.notes]


def make_plan(cfg: ScoreConfig, resources: dict[str, Any]) -> ResourcePlan:
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    e, d = cfg.engine, cfg.decode
    notes: list[str] = []
    gpus_per = float(e.num_gpus)
    if e.kind == "vllm" and gpus_per and e.tensor_parallel_size > gpus_per:
        gpus_per = float(e.tensor_parallel_size)
        notes.append(f"num_gpus raised to tensor_parallel_size={e.tensor_parallel_size}")
    if e.actors == "auto":
        engines = max(1, int(gpus // gpus_per)) if gpus_per > 0 and gpus > 0 else 1
    else:
        engines = int(e.actors)
    if gpus_per > 0 and engines * gpus_per > gpus:
        notes.append(f"{engines} scoring actors need {engines * gpus_per:g} GPUs, cluster has {gpus:g}: extra actors wait")
    if d.actors == "auto":
        spare = cpus - engines * e.num_cpus - max(cfg.input.read_num_cpus, 0.1)
        cap = max(1, int(spare // d.num_cpus)) if spare > 0 else 1
        mem = float(resources.get("memory", 0))
        if d.memory and mem:  # and by the cluster's memory resource (decode.memory per actor)
            cap = max(1, min(cap, int(mem // d.memory)))
        dmax = max(1, min(cap, math.ceil(d.actors_per_engine * engines)))
    else:
        dmax = int(d.actors)
    dmin = min(d.min_actors or 1, dmax)
    used = engines * e.num_cpus + dmax * d.num_cpus
    if cpus and used + cfg.input.read_num_cpus > cpus:
        notes.append(f"actors reserve {used:g} of {cpus:g} CPUs: read tasks may starve (lower num_cpus or actors)")
    return ResourcePlan(cpus, gpus, engines, gpus_per, e.num_cpus, dmin, dmax, d.num_cpus, cfg.input.read_num_cpus, notes,
                        float(d.memory or 0))


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def _amount(k: str, v: float) -> str:
    return f"{k}={_gib(v)}" if k == "memory" else f"{k}={v:g}"


def actor_demands(cfg: ScoreConfig, plan: ResourcePlan) -> dict[str, dict[str, float]]:
    """What one actor of each pool asks Ray for (only non-zero amounts)."""
    score = {"CPU": float(cfg.engine.num_cpus), "GPU": float(plan.gpus_per_engine), **{k: float(v) for k, v in cfg.engine.resources.items()}}
    decode = {"CPU": float(cfg.decode.num_cpus), "memory": float(cfg.decode.memory or 0)}
    return {"scoring actor": {k: v for k, v in score.items() if v > 0}, "decode actor": {k: v for k, v in decode.items() if v > 0}}


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of every alive node (Ray's per-node `node:<ip>` and placement-group keys dropped)."""
    import ray

    return [{k: float(v) for k, v in n.get("Resources", {}).items() if not k.startswith("node:") and "_group_" not in k}
            for n in ray.nodes() if n.get("Alive")]


def unplaceable(cfg: ScoreConfig, plan: ResourcePlan, nodes: list[dict[str, float]]) -> list[str]:
    """One clause per actor kind that no alive node can host, naming what it needs and what nodes offer."""
    out = []
    for what, need in actor_demands(cfg, plan).items():
        if any(all(n.get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
            continue
        missing = sorted({k for k, v in need.items() if not any(n.get(k, 0.0) >= v for n in nodes)}) or sorted(need)
        offer = "; ".join(", ".join(_amount(k, n[k]) for k in sorted(n) if k in need or k in ("CPU", "GPU")) or "nothing"
                          for n in nodes) or "no alive node"
        out.append(f"no node can host a {what} (needs {', '.join(_amount(k, v) for k, v in sorted(need.items()))}; "
                   f"missing {', '.join(missing)}; nodes offer: {offer})")
    return out
