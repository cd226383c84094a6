"""Read your own writes: `min_event=evt_...&wait=<s>` on the reads.

A client that just caused an event (a checkout success page holds the id of the
`checkout.session.completed` Stripe sent) passes its id; the read answers once the live
version has folded that event (or a duplicate of it), waiting at most `wait` seconds
(default 2, at most 10). Otherwise it answers 409 with the current answer and the reason:
`not_yet_folded`, or `parked` (the event sits in the dead letters, as poison or behind one:
waiting longer will not help, so that answer comes at once).

Waiting is cheap: a pooled connection is held for one check (and the read) at a time, never
across the wait; between checks the request sleeps on the process's `folded` signal
(`api.watcher`), which LISTEN and one shared poll fire.

With replicas (`api.readers`) the read and its wait run on one replica, with that
replica's watcher: the event must be visible where the answer is read, not on the primary.
A replica that fails meanwhile hands the rest of the same `wait` to the next target.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from api import http as api_http
from api import params as api_params
from api.readers import Target
from projections import feed
from projections.feed import EventState

__all__ = ["DEFAULT_WAIT_S", "MAX_WAIT_S", "Outcome", "read_after_event", "respond"]

DEFAULT_WAIT_S = 2.0
MAX_WAIT_S = 10.0

T = TypeVar("T")
Read = Callable[[AsyncConnection[Any]], Awaitable[T]]


class Outcome:
    """The `min_event` of one request (None: not asked) and what became of it."""

    def __init__(self, event: str | None, state: EventState | None) -> None:
        self.event = event
        self.state = state

    @property
    def stale(self) -> bool:
        return self.event is not None and self.state is not EventState.FOLDED

    def problem(self) -> dict[str, Any]:
        """The fields a 409 adds to the current answer."""
        assert self.state is not None
        why = (
            "is parked in the dead letters (poison, or behind a poison event of its customer)"
            if self.state is EventState.PARKED
            else "is not folded into the projection yet"
        )
        return {
            "error": f"event {self.event} {why}",
            "reason": self.state.value,
            "min_event": self.event,
        }


async def read_after_event(request: Request, read: Read[T]) -> tuple[T, Outcome]:
    """Run `read` once the request's `min_event` is folded (at once without one), or after
    its `wait` ran out, or at once when the event is parked."""
    params = request.query_params
    event = api_params.event_id(params.get("min_event"))
    wait_s = api_params.seconds(params.get("wait"), "wait", DEFAULT_WAIT_S, MAX_WAIT_S)
    readers = api_http.readers(request)
    if event is None:

        async def plain(target: Target) -> tuple[T, Outcome]:
            async with target.connection() as conn:
                return await read(conn), Outcome(None, None)

        return await readers.run(plain)
    deadline = time.monotonic() + wait_s

    async def check(conn: AsyncConnection[Any], last: bool) -> tuple[T, EventState] | None:
        state = await feed.event_state(conn, event)
        if state is EventState.PENDING and not last and wait_s > 0:
            return None
        return await read(conn), state

    async def waited(target: Target) -> tuple[T, EventState]:
        left = max(0.0, deadline - time.monotonic())
        signal = target.watcher.folded
        return await api_http.wait_for_news(request, signal, "min_event", left, check, target)

    answer, state = await readers.run(waited)
    api_http.metrics(request).min_event(state.value)
    return answer, Outcome(event, state)


def respond(body: dict[str, Any], outcome: Outcome) -> Response:
    """200 with `body`, or 409 with `body` and the problem when `min_event` is not folded."""
    if outcome.stale:
        return api_http.json_response({**body, **outcome.problem()}, 409)
    return api_http.json_response(body)
