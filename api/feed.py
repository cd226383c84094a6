"""The change feed over HTTP: a long-poll (`GET /v1/changes`) and Server-Sent Events
(`GET /v1/changes/stream`).

Both read `projections.feed` pages after a cursor (a change id) and, when there is nothing
new, sleep on the process's `changes` signal (`api.watcher`): no request holds a
pooled connection longer than one query, however long it waits. Streams read new changes
from `api.fanout` (one fetch per wake-up for all of them) once they have caught up.

The stream:
- starts after `Last-Event-ID` (what a reconnecting `EventSource` sends), else `?after=`,
  else at the feed's current head (only what happens from now on);
- opens with `retry:` and an `event: ready` whose `id:` is the start cursor, so that even a
  client that saw no change resumes from where it began, not from a later head;
- sends each change as `id: <change id>`, `event: change`, `data: <the change as JSON>`;
- sends a `: keepalive` comment every `HEARTBEAT_S` of silence, so proxies keep it open;
- keeps going across a database outage (it retries, with heartbeats) instead of failing:
  an `EventSource` does not reconnect after an error status;
- ends when the client goes (Starlette cancels the generator on `http.disconnect`), and when
  the server shuts down (`Watcher.end_waits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api import params as api_params
from api.fanout import Fanout
from api.http import (
    POOL_TIMEOUT_S,
    json_response,
    metrics,
    pool,
    wait_for_news,
    watcher,
)
from api.watcher import wait
from projections import feed

__all__ = ["HEARTBEAT_S", "changes", "stream"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
DEFAULT_WAIT_S, MAX_WAIT_S = 25.0, 60.0
HEARTBEAT_S = 15.0
RETRY_MS = 2000  # how long an EventSource waits before it reconnects
STREAM_BATCH = 500


def _customer(request: Request) -> str | None:
    value = request.query_params.get("customer")
    return None if value is None else api_params.customer_id(value)


async def changes(request: Request) -> Response:
    """Long-poll: the changes after `after`, as soon as there is one, or none after `wait`."""
    params = request.query_params
    after = api_params.change_id(params.get("after"), "after") or 0
    limit = api_params.limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
    wait_s = api_params.seconds(params.get("wait"), "wait", DEFAULT_WAIT_S, MAX_WAIT_S)
    customer = _customer(request)

    async def check(conn: AsyncConnection[Any], last: bool) -> feed.Page | None:
        page = await feed.page_after(conn, after, limit, customer)
        return page if page.changes or last or wait_s == 0 else None

    page = await wait_for_news(request, watcher(request).changes, "changes", wait_s, check)
    return json_response(page.to_json())


async def stream(request: Request) -> Response:
    """Server-Sent Events of the change feed (see the module doc)."""
    header = request.headers.get("last-event-id")
    start = (
        api_params.change_id(header, "Last-Event-ID")
        if header is not None
        else api_params.change_id(request.query_params.get("after"), "after")
    )
    customer = _customer(request)
    if start is None:
        async with pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
            start = await feed.head(conn)
    return StreamingResponse(
        _events(request, start, customer),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_finishing: set[asyncio.Task[Any]] = set()  # reads whose stream went: kept until they end


async def _to_the_end(read: Coroutine[Any, Any, T]) -> T:
    """`read` (one pooled query) run to its end even when the stream is cancelled meanwhile
    (the client went). Cancelled mid-query, psycopg closes the connection, so every client
    that hangs up at the wrong moment cost the pool a connection (and a new one: a reconnect
    under load), and a shared `Fanout.refresh` cut short left the other streams without the
    changes it had claimed to fetch. Finished, the connection goes back to the pool."""
    task = asyncio.ensure_future(read)
    _finishing.add(task)
    task.add_done_callback(_done)
    return await asyncio.shield(task)


def _done(task: asyncio.Task[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # its stream is gone (or sees the same exception through the shield): logged once
        log.debug("change stream read failed after its stream went", exc_info=task.exception())


def _message(event: str, id_: int, data: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (id_, event.encode(), orjson.dumps(data))


async def _page_after(
    connection: Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]],
    cursor: int,
    customer: str | None,
) -> feed.Page:
    async with connection() as conn:
        return await feed.page_after(conn, cursor, STREAM_BATCH, customer)


async def _events(request: Request, cursor: int, customer: str | None) -> AsyncIterator[bytes]:
    gauge = metrics(request).streams
    watch = watcher(request)
    fanout: Fanout = request.app.state.fanout
    gauge.inc()

    def connection() -> AbstractAsyncContextManager[AsyncConnection[Any]]:
        return pool(request).connection(timeout=POOL_TIMEOUT_S)

    try:
        yield b"retry: %d\n" % RETRY_MS + _message("ready", cursor, {"next": cursor})
        beat_at = time.monotonic() + HEARTBEAT_S
        while True:
            armed = watch.changes.armed()
            page: feed.Page | None = fanout.after(cursor, customer, STREAM_BATCH)
            try:
                if page is None:  # older than the shared memory: from the database
                    page = await _to_the_end(_page_after(connection, cursor, customer))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("change stream: database unavailable (%s); retrying", exc)
            if page is not None:
                if page.changes:
                    yield b"".join(_message("change", c.id, c.to_json()) for c in page.changes)
                    beat_at = time.monotonic() + HEARTBEAT_S
                cursor = page.next
                if len(page.changes) == STREAM_BATCH:
                    continue  # more is waiting: no sleep
            trust = watch.fallback_s if page is not None else 1.0
            woke = await wait(armed, min(beat_at - time.monotonic(), trust))
            if watch.ending:
                return  # the server is shutting down: the client reconnects elsewhere/later
            if time.monotonic() >= beat_at:
                yield b": keepalive\n\n"
                beat_at = time.monotonic() + HEARTBEAT_S
            try:  # one fetch per wake-up for all streams; a timeout fetches if unwatched
                start = cursor if page is not None else None  # caught up to `cursor`
                force = not woke and not watch.healthy
                await _to_the_end(fanout.refresh(connection, start=start, force=force))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("change stream: database unavailable (%s); retrying", exc)
    finally:
        gauge.dec()
