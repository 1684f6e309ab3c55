"""Run counters shared by the stages: one small Ray actor per run, fed fire-and-forget.

Stages call `report(name, {...})`; the driver polls `snapshot()` for the progress line and the summary.
A counter that cannot be reached never fails a stage (counters are observability, not correctness).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class RunStats:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.started = time.time()

    def add(self, counts: dict[str, float]) -> None:
        self.counts.update(counts)

    def snapshot(self) -> dict[str, Any]:
        return {"elapsed_s": time.time() - self.started, **self.counts}


def create(name: str) -> Any:
    return RunStats.options(name=name, lifetime=None, get_if_exists=True).remote()  # type: ignore[attr-defined]


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
