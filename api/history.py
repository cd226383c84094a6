"""The past and the reasons: `GET /v1/customers/{id}/history`, `as_of=` on the entitlements
and the search, and `GET /v1/customers/{id}/explain?movie=`.

All of them read the active version's history (`projections.history`), never the customer's
row now nor any in-memory read model: the past is in the history only. `as_of` is a unix time
(seconds); the answer is the state after the last change whose event is at or before it. A
time in the future or malformed is a 400, a time before the customer's first change a 404
(nothing is recorded of them then), and `as_of` with `min_event` a 400: `min_event` waits for
the projection of now, which an answer about the past does not read.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from api import params as api_params
from api.errors import BadRequest, NotFound
from api.http import json_response, readers
from api.readers import Target
from entitled.settings import Settings
from projections import explain, history, search
from projections.model.entitlements import Policy, grants_of_keys

__all__ = [
    "as_of",
    "customer_explain",
    "customer_history",
    "entitlements_as_of",
    "search_as_of",
]

_MAX_LIMIT = 500


def as_of(request: Request) -> int | None:
    """The request's `as_of` (None: not asked), checked."""
    params = request.query_params
    value = params.get("as_of")
    if value is None:
        return None
    if "min_event" in params:
        raise BadRequest(
            "as_of and min_event cannot be combined: min_event waits until the projection of"
            " now has folded an event, and an as_of answer reads the history instead"
        )
    try:
        at = int(value.strip())
    except ValueError:
        raise BadRequest("as_of must be a unix time in whole seconds") from None
    if at < 0 or at > 2**62:
        raise BadRequest("as_of must be a unix time in whole seconds")
    if at > time.time():
        raise BadRequest(f"as_of={at} is in the future: the history knows only the past")
    return at


async def _read(request: Request, read: Any) -> Any:
    async def run(target: Target) -> Any:
        async with target.connection() as conn:
            return await read(conn)

    return await readers(request).run(run)


def _known(state: history.State, customer: str, at: int) -> history.Entry:
    if state.first_created is None or state.entry is None:
        if state.first_created is None:
            raise NotFound(f"no history of {customer} in the projection")
        raise NotFound(
            f"as_of={at} is before the first change recorded for {customer}"
            f" (at {state.first_created}): nothing is known of them then"
        )
    return state.entry


def _change(e: history.Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "when": e.event_created,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "cause": e.cause,
    }


async def customer_history(request: Request) -> Response:
    customer = api_params.customer_id(request.path_params["customer"])
    params = request.query_params
    limit = api_params.limit(params.get("limit"), 50, _MAX_LIMIT)
    before = api_params.change_id(params.get("before"), "before")

    async def read(conn: AsyncConnection[Any]) -> history.Page:
        return await history.page(conn, customer, before=before, limit=limit)

    found: history.Page = await _read(request, read)
    if not found.entries and before is None:
        raise NotFound(f"no history of {customer} in the projection")
    return json_response(
        {
            "customer": customer,
            "changes": [e.to_json() for e in found.entries],
            "next": found.next,
        }
    )


async def entitlements_as_of(request: Request, customer: str, at: int) -> Response:
    async def read(conn: AsyncConnection[Any]) -> history.State:
        return await history.state_at(conn, customer, at)

    state: history.State = await _read(request, read)
    entry = _known(state, customer, at)
    return json_response(
        {
            "customer": customer,
            "as_of": at,
            "groups": entry.groups_after,
            "movie_ids": entry.movies_after,
            "grants": entry.grants,
            "change": _change(entry),
            "version": state.version,
        }
    )


async def search_as_of(request: Request, at: int) -> Response:
    params = request.query_params
    customer = api_params.customer_id(params.get("customer"))
    q = api_params.query(params.get("q"))
    limit = api_params.limit(params.get("limit"), 20, 100)
    feature = params.get("feature")
    settings: Settings = request.app.state.settings
    policy = Policy.from_settings(settings)
    within = None if feature is None else grants_of_keys([api_params.query(feature)], policy)

    async def read(conn: AsyncConnection[Any]) -> tuple[history.State, list[search.Hit]]:
        state = await history.state_at(conn, customer, at)
        if state.entry is None:
            return state, []
        held = (state.entry.groups_after, state.entry.movies_after)
        return state, await search.search(conn, customer, q, limit, within=within, held=held)

    state, hits = await _read(request, read)
    _known(state, customer, at)
    body: dict[str, Any] = {"customer": customer, "query": q, "as_of": at}
    if feature is not None:
        body["feature"] = feature
    body["results"] = [hit.to_json() for hit in hits]
    return json_response(body)


async def customer_explain(request: Request) -> Response:
    customer = api_params.customer_id(request.path_params["customer"])
    movie = request.query_params.get("movie")
    movie_id = None if movie is None else api_params.customer_id(movie, "movie")
    at = as_of(request)
    answer = await _explain(request, customer, movie_id, at)
    return json_response(answer)


async def _explain(
    request: Request, customer: str, movie_id: str | None, at: int | None
) -> dict[str, Any]:
    async def read(
        conn: AsyncConnection[Any],
    ) -> tuple[list[history.Entry], tuple[str, list[str]] | None]:
        entries = await history.entries_until(conn, customer, at)
        found = None if movie_id is None else await history.movie(conn, movie_id)
        return entries, found

    entries, found = await _read(request, read)
    try:
        return explain.explanation(customer, movie_id, at, entries, found)
    except explain.NothingRecorded as exc:
        raise NotFound(str(exc)) from None
