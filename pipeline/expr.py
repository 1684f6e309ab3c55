"""Checked SQL expressions over named columns: the one allow-list behind `vscore filter --where` and
`prefilter.where` (DuckDB does the parsing and the evaluating, never Python's eval).

* the expression is parsed by DuckDB inside ``SELECT * FROM scores WHERE (<expr>)`` and that must be
  exactly one statement (a ``;`` cannot smuggle in a second one);
* the parse tree (DuckDB's ``json_serialize_sql``) must be that plain SELECT and nothing else (no UNION,
  ORDER BY, LIMIT, CTE... reached by closing the parenthesis or commenting out the rest), and the WHERE
  tree may hold only references to the allowed columns, constants, comparisons, AND/OR/NOT, IN, BETWEEN,
  IS [NOT] NULL, CASE, casts and a short list of scalar functions: no subqueries, no table functions, no
  window or aggregate functions;
* what runs is DuckDB's own rendering of that checked tree (``json_deserialize_sql``), not the raw text,
  on a connection opened with ``enable_external_access=false`` (`connect()`), which DuckDB refuses to
  turn back on.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterator

import duckdb

from pipeline.errors import UsageError

# Scalar functions an expression may call (lower-case DuckDB names, including the ones operators map to).
ALLOWED_FUNCTIONS = frozenset({
    "abs", "round", "floor", "ceil", "ceiling", "least", "greatest", "coalesce", "ifnull", "nullif",
    "sqrt", "ln", "log", "log2", "log10", "exp", "pow", "power", "sign", "isnan", "isfinite",
    "lower", "upper", "length", "strlen", "starts_with", "ends_with", "contains", "prefix", "suffix",
    "regexp_matches", "like_escape", "~~", "!~~", "~~*", "!~~*", "+", "-", "*", "/", "//", "%",
})
ALLOWED_CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "BETWEEN", "CAST",
                             "CASE", "FUNCTION"})


class ExpressionError(UsageError):
    """The expression is not a plain expression over the allowed columns."""


def connect() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(config={"enable_external_access": False})


def _walk(node: Any, columns: set[str], what: str, source: str) -> Iterator[str]:
    """Yield the column names an expression tree references; raise on anything not allowed."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, columns, what, source)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls is not None:
        if cls not in ALLOWED_CLASSES:
            kind = {"SUBQUERY": "a subquery", "WINDOW": "a window function", "STAR": "*", "LAMBDA": "a lambda",
                    "PARAMETER": "a parameter"}.get(cls, cls.lower())
            raise ExpressionError(f"not allowed in {what}: {kind}")
        if cls == "COLUMN_REF":
            names = node.get("column_names") or []
            if len(names) != 1:
                raise ExpressionError(f"use plain column names (got {'.'.join(names)})")
            name = names[0]
            match = next((c for c in columns if c.lower() == name.lower()), None)
            if match is None:
                raise ExpressionError(f"unknown column {name!r}; {source} has: {', '.join(sorted(columns))}")
            yield match
            return
        if cls == "FUNCTION":
            fname = str(node.get("function_name", "")).lower()
            if fname not in ALLOWED_FUNCTIONS or node.get("schema") or node.get("catalog"):
                raise ExpressionError(f"function {fname!r} is not allowed in {what} "
                                      f"(allowed: {', '.join(sorted(f for f in ALLOWED_FUNCTIONS if f[0].isalpha()))})")
            if node.get("filter") or node.get("distinct") or (node.get("order_bys") or {}).get("orders"):
                raise ExpressionError(f"aggregate syntax is not allowed in {what} ({fname})")
    for key, value in node.items():
        if isinstance(value, (dict, list)):
            yield from _walk(value, columns, what, source)


def _serialize(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise ExpressionError(f"not a valid expression: {tree.get('error_message', 'parse error')}")
    return tree


def compile_where(expr: str, columns: list[str] | tuple[str, ...], what: str = "--where",
                  source: str = "the scores dataset") -> tuple[str, list[str], list[str]]:
    """Check `expr` and return (the SQL DuckDB renders for it, the top-level AND-ed conditions rendered
    the same way, the columns it uses). Raises ExpressionError on anything but a plain expression.
    `what` names the expression and `source` what holds `columns`, in the messages."""
    if not expr or not expr.strip():
        raise ExpressionError(f"empty {what} expression")
    sql = f"SELECT * FROM scores WHERE ({expr})"
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ExpressionError(f"not a valid expression: {str(e).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ExpressionError(f"{what} must be one expression, not several statements")
    con = connect()
    try:
        try:
            tree = _serialize(con, sql)
        except duckdb.Error as e:
            raise ExpressionError(f"not a valid expression: {str(e).splitlines()[0]}") from None
        stmts = tree.get("statements") or []
        node = stmts[0].get("node", {}) if len(stmts) == 1 else {}
        select = node.get("select_list") or []
        frm = node.get("from_table") or {}
        plain = (node.get("type") == "SELECT_NODE" and not node.get("modifiers") and not (node.get("cte_map") or {}).get("map")
                 and len(select) == 1 and select[0].get("class") == "STAR" and not select[0].get("exclude_list")
                 and frm.get("type") == "BASE_TABLE" and frm.get("table_name") == "scores" and not frm.get("schema_name")
                 and not frm.get("sample") and not node.get("group_expressions") and not node.get("group_sets")
                 and node.get("having") is None and node.get("qualify") is None and node.get("sample") is None
                 and node.get("where_clause") is not None)
        if not plain:
            raise ExpressionError(f"{what} must be a single expression over the columns of {source} "
                                  "(no ORDER BY/LIMIT/UNION/comments closing the condition)")
        where = node["where_clause"]
        used = sorted(set(_walk(where, set(columns), what, source)))
        if not used:
            raise ExpressionError(f"{what} does not use any column of {source}")

        def render(w: dict[str, Any]) -> str:
            t = copy.deepcopy(tree)
            t["statements"][0]["node"]["where_clause"] = w
            text = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(t)]).fetchall()[0][0]
            prefix = "SELECT * FROM scores WHERE "
            assert text.startswith(prefix), text
            return text[len(prefix):]

        parts = where["children"] if where.get("type") == "CONJUNCTION_AND" else [where]
        return render(where), [render(p) for p in parts], used
    finally:
        con.close()


