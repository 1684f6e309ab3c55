"""The prefilter: which decoded clips go on to the judge (`prefilter.preset` / `prefilter.where`).

The expression (checked by `pipeline.expr.compile_where` over `schema.PREFILTER_COLUMNS`, the probe's and the
signals' columns) is split into its top-level AND-ed conditions; each is evaluated by DuckDB over the batch's
decoded rows (a connection without external access, one per decode actor). A row for which any condition is
not TRUE (FALSE or NULL, SQL WHERE semantics) is skipped: the decode stage gives it status "skipped",
error_stage "prefilter" and, as `error`, the failed condition(s) as DuckDB renders them, joined by "; ".
Rows that are not ok (read or decode errors) are not evaluated.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.config import PrefilterConfig, compile_prefilter
from pipeline.schema import OUTPUT_SCHEMA, PREFILTER_COLUMNS

CONDITION_SEPARATOR = "; "


def skip_conditions(error: str | None) -> list[str]:
    """The failed conditions a skipped row's `error` names."""
    return [c for c in (error or "").split(CONDITION_SEPARATOR) if c] or ["(unknown)"]


def _unwrap(cond: str) -> str:
    """`(a >= 1)` -> `a >= 1`: one pair of outer parentheses dropped when they enclose the whole condition."""
    if not (cond.startswith("(") and cond.endswith(")")):
        return cond
    depth = 0
    quote = False
    for i, ch in enumerate(cond):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
            if depth == 0 and i != len(cond) - 1:
                return cond  # `(a) AND (b)`: the first pair closes early
    return cond[1:-1]


class Prefilter:
    """The compiled prefilter of a run; `failed(rows)` evaluates it on a batch."""

    def __init__(self, cfg: PrefilterConfig | None) -> None:
        self.expression = cfg.expression() if cfg is not None else None
        self.conditions: list[str] = []
        if self.expression:
            _, conditions, _ = compile_prefilter(self.expression)
            self.conditions = [_unwrap(c) for c in conditions]
        self._con: Any = None

    @property
    def active(self) -> bool:
        return bool(self.conditions)

    def failed(self, rows: list[dict[str, Any]]) -> list[str | None]:
        """For each row (a dict holding PREFILTER_COLUMNS): None if it passes, else its failed conditions."""
        if not self.active or not rows:
            return [None] * len(rows)
        if self._con is None:
            from pipeline.expr import connect

            self._con = connect()
            self._con.execute("SET threads = 1")  # a decode actor's CPU is the decoder's
        table = pa.table({**{c: pa.array([r.get(c) for r in rows], type=OUTPUT_SCHEMA.field(c).type) for c in PREFILTER_COLUMNS},
                          "__row": pa.array(range(len(rows)), type=pa.int64())})
        self._con.register("scores", table)
        try:
            select = ", ".join(f"(({c}) IS TRUE)" for c in self.conditions)
            results = self._con.execute(f"SELECT {select} FROM scores ORDER BY __row").fetchall()
        finally:
            self._con.unregister("scores")
        out: list[str | None] = []
        for res in results:
            bad = [c for c, ok in zip(self.conditions, res) if not ok]
            out.append(CONDITION_SEPARATOR.join(bad) if bad else None)
        return out
