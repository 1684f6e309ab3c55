"""The resource plan: how many actors of each stage to run on this cluster, computed in one place and
printed at start.

- scoring actors: `engine.actors`, or with 'auto' the cluster's GPUs / GPUs per actor (GPUs per actor is
  `tensor_parallel_size` for vLLM); on a CPU-only cluster, 1;
- decode actors: `decode.actors`, or with 'auto' `decode.actors_per_engine` x scoring actors, capped by
  the CPUs left after the scoring actors and a reserve for read tasks; the pool autoscales between
  `decode.min_actors` and that number;
- read tasks take `input.read_num_cpus` each; Ray Data schedules as many as fit.
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

    def lines(self) -> list[str]:
        out = [
            f"cluster: {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs",
            f"score:  {self.engine_actors} actor(s) x ({self.gpus_per_engine:g} GPU, {self.cpus_per_engine:g} CPU)",
            f"decode: {self.decode_actors_min}..{self.decode_actors_max} actor(s) x {self.cpus_per_decode:g} CPU",
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
        dmax = max(1, min(cap, math.ceil(d.actors_per_engine * engines)))
    else:
        dmax = int(d.actors)
    dmin = min(d.min_actors or dmax, dmax)
    used = engines * e.num_cpus + dmax * d.num_cpus
    if cpus and used + cfg.input.read_num_cpus > cpus:
        notes.append(f"actors reserve {used:g} of {cpus:g} CPUs: read tasks may starve (lower num_cpus or actors)")
    return ResourcePlan(cpus, gpus, engines, gpus_per, e.num_cpus, dmin, dmax, d.num_cpus, cfg.input.read_num_cpus, notes)
