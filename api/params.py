"""Query parameters and bodies of the read API, checked: each parser returns a clean value or
raises `BadRequest` with a message that names the parameter (a 400, never a 500)."""

from __future__ import annotations

import math

import orjson
from starlette.requests import Request

from api.errors import BadRequest
from projections import catalog
from projections.catalog import InvalidMovie

__all__ = [
    "MAX_BODY",
    "MAX_CUSTOMER",
    "MAX_Q",
    "change_id",
    "customer_id",
    "event_id",
    "json_body",
    "limit",
    "path_movie_id",
    "query",
    "seconds",
]

MAX_Q = 200
MAX_CUSTOMER = 255
MAX_EVENT_ID = 255
MAX_BODY = 64 * 1024
# Change ids are Postgres bigints: a larger cursor would fail in SQL, not here.
MAX_CHANGE_ID = 2**63 - 1


def customer_id(value: str | None, name: str = "customer") -> str:
    if not value:
        raise BadRequest(f"{name} is required")
    if len(value) > MAX_CUSTOMER:
        raise BadRequest(f"{name} is longer than {MAX_CUSTOMER} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} contains a NUL character")
    return value


def limit(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= n <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}")
    return n


def query(value: str | None) -> str:
    q = value or ""
    if len(q) > MAX_Q:
        raise BadRequest(f"q is longer than {MAX_Q} characters")
    # Postgres text cannot hold NUL; to a text search it is just a separator.
    return q.replace("\x00", " ")


def seconds(value: str | None, name: str, default: float, maximum: float) -> float:
    """A duration in seconds, 0 to `maximum` (fractions allowed)."""
    if value is None:
        return default
    try:
        s = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds") from None
    if not (math.isfinite(s) and 0 <= s <= maximum):
        raise BadRequest(f"{name} must be between 0 and {maximum:g} seconds")
    return s


def change_id(value: str | None, name: str) -> int | None:
    """A change feed cursor (a change id, 0 for the start of the feed); None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_CHANGE_ID:
        raise BadRequest(f"{name} must be a change id (an integer from 0 to {MAX_CHANGE_ID})")
    return int(text)


def event_id(value: str | None) -> str | None:
    """A Stripe event id (`evt_...`) for `min_event`; None when absent."""
    if value is None:
        return None
    if not value.startswith("evt_") or len(value) <= 4:
        raise BadRequest("min_event must be a Stripe event id (evt_...)")
    if len(value) > MAX_EVENT_ID:
        raise BadRequest(f"min_event is longer than {MAX_EVENT_ID} characters")
    if "\x00" in value:
        raise BadRequest("min_event contains a NUL character")
    return value


async def json_body(request: Request) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"body is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"body is larger than {MAX_BODY} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None


def path_movie_id(request: Request) -> str:
    try:
        return catalog.check_movie_id(request.path_params["movie_id"])
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None
