"""Object store and spill figures of the connected Ray cluster, for benchmarks and tests (not used by runs).

Ray prints these as `ray memory --stats-only`; that command asks a raylet for the cluster-wide store stats
(`FormatGlobalMemoryInfo`). The same reply is read here as numbers, through the helpers that command
uses (`ray._private.internal_api`: private, so pinned by tests/test_memory_pressure.py, which asserts
real spilling through it)."""

from __future__ import annotations

from typing import Any


def store_stats() -> dict[str, Any]:
    """Cluster-wide object store figures in bytes: `used`, `avail`, `primary_copy` (objects whose primary
    copy is in the store), `fallback` (objects allocated on disk because the store was full), `spilled`,
    `restored` (totals since the cluster started), `spilled_objects`, `restored_objects`, `spill_time_s`.
    Needs `ray.init` first (any address)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    address = ray.get_runtime_context().gcs_address
    s = get_memory_info_reply(get_state_from_address(address)).store_stats
    return {"used": int(s.object_store_bytes_used), "avail": int(s.object_store_bytes_avail),
            "primary_copy": int(s.object_store_bytes_primary_copy), "fallback": int(s.object_store_bytes_fallback),
            "spilled": int(s.spilled_bytes_total), "spilled_objects": int(s.spilled_objects_total),
            "restored": int(s.restored_bytes_total), "restored_objects": int(s.restored_objects_total),
            "spill_time_s": float(s.spill_time_total_s)}
