"""Read a logged event body as JSON, tolerant where the standard allows it.

The log keeps every correctly signed webhook body byte for byte, whatever it holds (issue
19, point 10): Stripe retries a refused body for three days and then drops the event, so
ingest never refuses a signed body for its content. Both ingest (to find the routing key)
and the fold (to read the event) therefore meet bodies that orjson, strict by design,
refuses although they are valid JSON text:

- a number out of double range (`1e400`): read as a float infinity, which every tolerant
  field reader treats as a value of the wrong type (its default);
- a lone surrogate escape (`"\\ud800"`): Postgres text cannot hold it, so it becomes U+FFFD;
- nesting deeper than orjson's limit but within Python's: read by the standard library.

What still cannot be read (not JSON, nested deeper than the interpreter's recursion limit)
raises `UnreadableBody` with a reason a dead letter can show.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["UnreadableBody", "epoch_seconds", "loads"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class UnreadableBody(ValueError):
    """The body is not JSON that can be read; the message says why."""


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw`: orjson first (fast path), the standard library after."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return _clean(json.loads(raw))
    except RecursionError:
        raise UnreadableBody("JSON nested too deeply to read") from None
    except (ValueError, TypeError) as exc:
        raise UnreadableBody(f"not JSON: {exc}"[:200]) from None


def epoch_seconds(value: Any) -> float | None:
    """An event's `created` as Unix seconds: a number (snapshot events), an ISO-8601 string
    (thin notifications; UTC when it names no zone) or a string of digits; None otherwise.
    The fold orders by it, and forgetting compares it with the time of a forget."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return float(value) if value.isdigit() else None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    return None


def _clean(value: Any) -> Any:
    """`value` with every string free of lone surrogates (U+FFFD instead)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value
