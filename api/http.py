"""What every route module of the read API shares: the JSON response and the app's pool,
watcher and metrics (built once by `api.app.create_app`, kept in `app.state`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from api.metrics import APIMetrics
from api.readers import Readers, Target
from api.watcher import Signal, Watcher, wait

__all__ = [
    "POOL_TIMEOUT_S",
    "json_response",
    "metrics",
    "pool",
    "readers",
    "wait_for_news",
    "watcher",
]

T = TypeVar("T")

POOL_TIMEOUT_S = 5.0  # longest wait for a pooled connection before answering 503


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def pool(request: Request) -> AsyncConnectionPool[Any]:
    p: AsyncConnectionPool[Any] = request.app.state.pool
    return p


def watcher(request: Request) -> Watcher:
    w: Watcher = request.app.state.watcher
    return w


def readers(request: Request) -> Readers:
    """Where reads go: the replicas in turn, or the primary (`api.readers`)."""
    r: Readers = request.app.state.readers
    return r


def metrics(request: Request) -> APIMetrics:
    m: APIMetrics = request.app.state.metrics
    return m


async def wait_for_news(
    request: Request,
    signal: Signal,
    kind: str,
    wait_s: float,
    check: Callable[[AsyncConnection[Any], bool], Awaitable[T | None]],
    target: Target | None = None,
) -> T:
    """`check(conn, last)` until it returns something: at once, then each time `signal`
    fires (or the watcher's fallback interval passes). `last` is True on the final call
    (`wait_s` ran out, the server is shutting down, the client went): it must answer then.

    A pooled connection is held only for each `check`, never across the wait; `kind` labels
    the request in the `entitled_api_waiting_requests` gauge. With a `target` (a replica
    the read goes to) its pool and watcher serve the checks, not the primary's.
    """
    db = target.pool if target is not None else pool(request)
    timeout = target.pool_timeout if target is not None else POOL_TIMEOUT_S
    watch = target.watcher if target is not None else watcher(request)
    deadline = time.monotonic() + wait_s
    last = False
    with metrics(request).waiting.labels(kind).track_inprogress():
        while True:
            armed = signal.armed()
            async with db.connection(timeout=timeout) as conn:
                found = await check(conn, last)
            if found is not None:
                return found
            await wait(armed, min(deadline - time.monotonic(), watch.fallback_s))
            last = time.monotonic() >= deadline or watch.ending or await request.is_disconnected()
