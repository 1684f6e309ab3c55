"""Best-of-N selection: per group (e.g. per prompt), the video VideoScore2 rates best.

Official rule (``eval/best_of_n_run.py`` @3cc5d030): ``np.argmax`` of ``mean(v, t, p)`` of the integer
(hard) scores, i.e. the first maximum. Here, per group, each valid candidate gets

1. the **primary** score: the aggregate (``mean`` by default, or ``sum`` / ``min``) of the three scores
   selected by ``use`` (``hard`` by default, as the official script; or ``soft`` / ``expected``);
2. the **tie-break** score: the same aggregate of the soft scores when ``use`` is hard (of the hard
   scores when ``use`` is soft or expected); a candidate whose tie-break score is missing (a null) ranks
   below any candidate that has one;
3. then the "first" candidate in a deterministic order: smallest ``key``, then ``shard``, then ``row_id``
   (dataset row order is not stable across writers, so "first" is defined by the key: with keys such
   as ``seed0..seed4`` this is the official first maximum).

The best candidate has the highest (primary, tie-break) and, among equals, comes first in 3.

A candidate is valid when ``status == "ok"``, its three primary scores are non-null and (unless
``keep_out_of_range``) its hard scores are not flagged ``out_of_range``. Invalid candidates are skipped
and counted per reason; a group without any valid candidate yields a row with ``status = "no_valid"``
and null choice columns. The whole dataset is streamed; memory grows with the number of groups only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.config import StorageOptions
from pipeline.errors import UsageError
from pipeline.vs2.parse import DIMENSIONS
from pipeline.storage import filesystem

AGGREGATES: dict[str, Callable[[float, float, float], float]] = {
    "mean": lambda v, t, p: (v + t + p) / 3,
    "sum": lambda v, t, p: v + t + p,
    "min": lambda v, t, p: min(v, t, p),
}
USES = ("hard", "soft", "expected")
_SUFFIX = {"hard": "", "soft": "_soft", "expected": "_expected"}

RESULT_SCHEMA = pa.schema([
    pa.field("group", pa.string()),
    pa.field("status", pa.string()),
    pa.field("group_size", pa.int64()),
    pa.field("valid_count", pa.int64()),
    pa.field("skipped_count", pa.int64()),
    pa.field("skipped_error", pa.int64()),
    pa.field("skipped_null_score", pa.int64()),
    pa.field("skipped_out_of_range", pa.int64()),
    pa.field("skipped_prefilter", pa.int64()),
    pa.field("n_best", pa.int64()),
    pa.field("key", pa.string()),
    pa.field("row_id", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("tie_break_score", pa.float64()),
    *(pa.field(d, pa.int32()) for d in DIMENSIONS),
    *(pa.field(f"{d}_soft", pa.float64()) for d in DIMENSIONS),
])


class _Group:
    __slots__ = ("size", "skipped", "best", "best_rank", "n_best")

    def __init__(self) -> None:
        self.size = 0
        self.skipped: Counter = Counter()
        self.best: dict[str, Any] | None = None
        self.best_rank: tuple[float, float] | None = None
        self.n_best = 0


def _group_value(row: dict[str, Any], group_by: str) -> str | None:
    if group_by.startswith("meta."):
        raw = row.get("meta_json")
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        v = meta.get(group_by[5:]) if isinstance(meta, dict) else None
    else:
        v = row.get(group_by)
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _order(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row.get("key") or "", row.get("shard") or "", row.get("row_id") or "")


def select_best(rows: list[dict[str, Any]] | Any, group_by: str = "prompt", aggregate: str = "mean", use: str = "hard",
                keep_out_of_range: bool = False) -> list[dict[str, Any]]:
    """Best-of-N over an iterable of score rows (dicts with OUTPUT_SCHEMA column names). One result row
    per group, sorted by group (null group last)."""
    if aggregate not in AGGREGATES:
        raise UsageError(f"aggregate must be one of {tuple(AGGREGATES)}")
    if use not in USES:
        raise UsageError(f"use must be one of {USES}")
    agg = AGGREGATES[aggregate]
    primary_cols = [d + _SUFFIX[use] for d in DIMENSIONS]
    tie_cols = [d + ("_soft" if use == "hard" else "") for d in DIMENSIONS]
    groups: dict[str | None, _Group] = {}
    for row in rows:
        g = groups.setdefault(_group_value(row, group_by), _Group())
        g.size += 1
        if row.get("status") != "ok":  # a prefilter-skipped row is not an error: counted on its own
            g.skipped["prefilter" if row.get("status") == "skipped" else "error"] += 1
            continue
        prim = [row.get(c) for c in primary_cols]
        if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in prim):
            g.skipped["null_score"] += 1
            continue
        if row.get("out_of_range") and not keep_out_of_range:
            g.skipped["out_of_range"] += 1
            continue
        tie = [row.get(c) for c in tie_cols]
        tie_score = None if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in tie) else float(agg(*tie))
        score = float(agg(*prim))
        rank = (score, -math.inf if tie_score is None else tie_score)
        if g.best is not None and score == g.best_rank[0]:
            g.n_best += 1
        elif g.best is None or score > g.best_rank[0]:
            g.n_best = 1
        if g.best is None or rank > g.best_rank or (rank == g.best_rank and _order(row) < _order(g.best)):
            g.best_rank = rank
            g.best = {**{c: row.get(c) for c in ("key", "row_id", "shard", *DIMENSIONS, *(f"{d}_soft" for d in DIMENSIONS))},
                      "score": score, "tie_break_score": tie_score}
    out = []
    for name in sorted(groups, key=lambda k: (k is None, k or "")):
        g = groups[name]
        skipped = sum(g.skipped.values())
        rec: dict[str, Any] = {
            "group": name, "status": "ok" if g.best is not None else "no_valid", "group_size": g.size,
            "valid_count": g.size - skipped, "skipped_count": skipped, "skipped_error": g.skipped["error"],
            "skipped_null_score": g.skipped["null_score"], "skipped_out_of_range": g.skipped["out_of_range"],
            "skipped_prefilter": g.skipped["prefilter"],
            "n_best": g.n_best if g.best is not None else 0,
        }
        rec.update(g.best or {})
        out.append({c: rec.get(c) for c in RESULT_SCHEMA.names})
    return out


def _iter_rows(dset: pads.Dataset, columns: list[str], filt: Any) -> Any:
    for batch in dset.to_batches(columns=columns, filter=filt):
        yield from batch.to_pylist()


def best_of_n(scores_url: str, out_url: str, group_by: str = "prompt", aggregate: str = "mean", use: str = "hard",
              keep_out_of_range: bool = False, run_id: str | None = None,
              storage: StorageOptions | None = None) -> dict[str, Any]:
    """Read the needed columns of a scores dataset, select per group, write OUT (Parquet, or CSV when the
    path ends with .csv). Returns a summary."""
    from pipeline.tools.dataset import open_scores

    storage = storage or StorageOptions()
    if use not in _SUFFIX:
        raise UsageError(f"use must be one of {USES}")
    group_col = "meta_json" if group_by.startswith("meta.") else group_by
    required = ["status", *(d + _SUFFIX[use] for d in DIMENSIONS)]
    sd = open_scores(scores_url, storage, need=required, run_id=run_id)
    dset = sd.dataset
    names = dset.schema.names
    if group_col not in names:
        raise UsageError(f"--group-by {group_by!r}: the scores at {scores_url} have no column {group_col!r}")
    wanted = {group_col, "key", "row_id", "shard", "status", "out_of_range",
              *DIMENSIONS, *(f"{d}_soft" for d in DIMENSIONS), *(d + _SUFFIX[use] for d in DIMENSIONS)}
    cols = [c for c in names if c in wanted]
    filt = sd.run_filter(run_id)
    result = select_best(_iter_rows(dset, cols, filt), group_by=group_by, aggregate=aggregate, use=use,
                         keep_out_of_range=keep_out_of_range)
    table = pa.Table.from_pylist(result, schema=RESULT_SCHEMA)
    fs, path = filesystem(out_url, storage)
    parent = path.rstrip("/").rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, f)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, f)
    return {"output": out_url, "groups": len(result), "groups_ok": sum(r["status"] == "ok" for r in result),
            "groups_no_valid": sum(r["status"] == "no_valid" for r in result),
            "rows": sum(r["group_size"] for r in result), "valid_rows": sum(r["valid_count"] for r in result),
            "skipped_rows": sum(r["skipped_count"] for r in result), "group_by": group_by,
            "aggregate": aggregate, "use": use}
