"""Clip spans as corpora write them: `start_s`/`end_s` numbers or timestamps, and Panda-70M's lists.

- a time is a number of seconds (int/float, or a numeric string) or a timestamp ``H:MM:SS.mmm`` /
  ``MM:SS.mmm`` (Panda-70M writes ``"0:00:05.005"``);
- a list of spans is a list of ``[start, end]`` pairs, given as a list or as the string of one (Panda-70M's
  CSV holds ``"[['0:00:00.000', '0:00:05.005'], ...]"``: Python literal syntax, parsed with
  ``ast.literal_eval``, never evaluated), with a parallel list of captions.

Only parsing here; what a span means for the frames is `pipeline.vs2.frames.span_frame_range` (the
qwen-vl-utils rule) and whether it is valid for a given video is decided when it is decoded.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

Span = tuple[float | None, float | None]  # (start_s, end_s); None = from the beginning / to the end

_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


class SpanError(ValueError):
    """A span value that cannot be parsed (the message says which and why)."""


def parse_time(value: Any, what: str = "time") -> float | None:
    """Seconds from a number, a numeric string or a ``[H:]MM:SS[.fff]`` timestamp; None/"" -> None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise SpanError(f"{what} {value!r} is not a time")
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str):
        text = value.strip()
        m = _TIMESTAMP.match(text)
        if m:
            h, mm, ss = m.groups()
            t = int(h or 0) * 3600 + int(mm) * 60 + float(ss)
        else:
            try:
                t = float(text)
            except ValueError:
                raise SpanError(f"{what} {value!r} is neither seconds nor H:MM:SS.mmm") from None
    else:
        try:
            t = float(value)  # numpy scalars
        except (TypeError, ValueError):
            raise SpanError(f"{what} {value!r} is not a time") from None
    if math.isnan(t):
        return None
    if not math.isfinite(t):
        raise SpanError(f"{what} {value!r} is not finite")
    return t


def parse_list(value: Any, what: str) -> list[Any]:
    """A list from a list/tuple/array or the string of one (JSON or Python literal syntax)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        out = value.tolist()
        if isinstance(out, list):
            return out
    if isinstance(value, str):
        text = value.strip()
        for parse in (json.loads, ast.literal_eval):
            try:
                out = parse(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(out, (list, tuple)):
                return list(out)
    raise SpanError(f"{what} is not a list: {str(value)[:80]!r}")


def parse_spans(value: Any, what: str = "spans") -> list[Span]:
    """A list of [start, end] pairs (see module docstring)."""
    spans = []
    for i, pair in enumerate(parse_list(value, what)):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SpanError(f"{what}[{i}] is not a [start, end] pair: {str(pair)[:60]!r}")
        spans.append((parse_time(pair[0], f"{what}[{i}] start"), parse_time(pair[1], f"{what}[{i}] end")))
    return spans


def is_listish(value: Any) -> bool:
    """A list value, or a string that looks like one (Panda-70M's captions column)."""
    if isinstance(value, (list, tuple)):
        return True
    return isinstance(value, str) and value.lstrip().startswith("[")


def span_label(span: Span) -> str:
    """Canonical text of a span for ids and keys ("" = the whole video): same span, same text."""
    start, end = span
    if start is None and end is None:
        return ""
    return f"{'' if start is None else repr(round(start, 6))}-{'' if end is None else repr(round(end, 6))}"
