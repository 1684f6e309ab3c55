"""What a sample row is, whatever it was read from (a WebDataset sample or a manifest row): the read stage's
row dict, field lookup (dotted paths), the prompt rule (`input.prompt_fields`) and span expansion (one row
per clip span). Shared by `pipeline.stages.read` (shards) and `pipeline.stages.manifest` (tables)."""

from __future__ import annotations

from typing import Any

from pipeline.schema import make_row_id
from pipeline.spans import Span, SpanError, is_listish, parse_list, parse_spans, parse_time


def get_field(record: dict[str, Any], name: str) -> Any:
    """`record[name]`, else the nested value of a dotted path (``meta.caption``); None when absent."""
    if name in record:
        return record[name]
    node: Any = record
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def first_prompt(record: dict[str, Any], fields: list[str]) -> str | None:
    """The first non-empty string among `fields` of `record` (stripped), or None."""
    for f in fields:
        v = get_field(record, f)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def base_row(shard: str, shard_group: str, key: str) -> dict[str, Any]:
    return {"row_id": make_row_id(shard, key), "key": key, "shard": shard, "shard_group": shard_group,
            "prompt": None, "meta_json": None, "video": b"", "status": "ok", "error_stage": None, "error": None,
            "source_url": None, "start_s": None, "end_s": None}


def span_values(record: dict[str, Any], cols: Any, shard_defaults: bool) -> tuple[Any, Any, Any]:
    """The raw (start, end, spans) values of a record under the configured names (shard JSON falls back to
    ``start_s``/``end_s``/``spans``)."""
    names = [cols.start_s, cols.end_s, cols.spans]
    if shard_defaults:
        names = [n or d for n, d in zip(names, ("start_s", "end_s", "spans"))]
    return tuple(get_field(record, n) if n else None for n in names)


def expand_spans(start: Any, end: Any, spans: Any, prompt: Any) -> list[tuple[Span | None, Any]]:
    """[(span or None for the whole video, prompt)] of one record: a `spans` list (or list-valued start/end)
    gives one entry per span with the matching caption when `prompt` is a parallel list. Raises SpanError."""
    if spans is not None and not (isinstance(spans, str) and not spans.strip()):
        pairs = parse_spans(spans)
    elif is_listish(start) or is_listish(end):
        starts, ends = parse_list(start, "start_s"), parse_list(end, "end_s")
        if len(starts) != len(ends):
            raise SpanError(f"{len(starts)} starts but {len(ends)} ends")
        pairs = [(parse_time(a, f"start_s[{i}]"), parse_time(b, f"end_s[{i}]")) for i, (a, b) in enumerate(zip(starts, ends))]
    else:
        a, b = parse_time(start, "start_s"), parse_time(end, "end_s")
        return [((a, b) if (a is not None or b is not None) else None, prompt)]
    if not pairs:
        raise SpanError("empty list of spans")
    if prompt is not None and is_listish(prompt):
        try:
            prompts = parse_list(prompt, "captions")
        except SpanError:
            if len(pairs) != 1 or not isinstance(prompt, str):
                raise
            prompts = [prompt]  # one span, a caption that merely starts with "[" ("[Music] a cat ...")
        if len(prompts) != len(pairs):
            raise SpanError(f"{len(pairs)} spans but {len(prompts)} captions")
    else:
        prompts = [prompt] * len(pairs)
    return list(zip(pairs, prompts))
