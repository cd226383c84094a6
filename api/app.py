"""The read API: search with availability, entitlements, customers, the catalogue, the
change feed, the page.

`create_app(settings)` builds one Starlette app holding one psycopg pool and one change
watcher (both opened in the lifespan) and its own Prometheus registry. Routes only parse
(`api.params`), call `projections.search` / `projections.catalog` /
`projections.feed` (all SQL lives there) and render; every failure is an exception mapped
to a status and an `{"error": "..."}` body by the one handler `_on_error`. The change feed's
routes are in `api.feed`, read-your-own-writes (`min_event`) in
`api.min_event`; refusals before any route (Host, Content-Type) in `api.guards`, the
bearer tokens (read / admin) in `entitled.tokens`. The HTTP reference is docs/http.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import psycopg
import psycopg.errors
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from api import drift as api_drift
from api import feed as api_feed
from api import forget as api_forget
from api import history as api_history
from api import params as api_params
from api.errors import APIError, BadRequest, NotFound, ServiceUnavailable
from api.fanout import Fanout
from api.features import features_of
from api.guards import ContentTypeGuard, HostGuard, authorized, header, refusal
from api.http import POOL_TIMEOUT_S, json_response, pool, readers
from api.metrics import CONTENT_TYPE, APIMetrics
from api.min_event import DEFAULT_WAIT_S, MAX_WAIT_S, Outcome, read_after_event, respond
from api.model import ReadModel, Step
from api.pool import create_pool, create_readers, read_url
from api.readers import Readers, Target
from api.watcher import Watcher
from entitled.settings import Settings
from projections import catalog, search
from projections.catalog import InvalidMovie
from projections.model.entitlements import Policy, grants_of_keys
from projections.model.metadata import groups_in, metadata_of, movies_in

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.json"

Endpoint = Callable[[Request], Awaitable[Response]]


# -- routes ----------------------------------------------------------------------------------


async def search_movies(request: Request) -> Response:
    at = api_history.as_of(request)  # the past is in the history: no read model, no row now
    if at is not None:
        return await api_history.search_as_of(request, at)
    params = request.query_params
    customer = api_params.customer_id(params.get("customer"))
    q = api_params.query(params.get("q"))
    limit = api_params.limit(params.get("limit"), 20, 100)
    feature = params.get("feature")
    within = None
    if feature is not None:
        policy = Policy.from_settings(request.app.state.settings)
        within = grants_of_keys([api_params.query(feature)], policy)

    model: ReadModel = request.app.state.model
    if model.max_customers > 0 and "as_of" not in params:  # from memory (`api.model`)
        # On the database the read path would read (a replica in turn, or the primary),
        # with its failover: a model that is not current takes its marks there, not on
        # the primary; a current one answers from memory on that reader's behalf.
        if params.get("min_event") is None:
            api_params.seconds(params.get("wait"), "wait", DEFAULT_WAIT_S, MAX_WAIT_S)  # checked
            results = model.answer_now(customer, q, limit, within)
            if results is not None:  # the hot path: no coroutine of the readers, no Hit
                readers(request).answered()
                return json_response(_search_body(customer, q, feature, results))

            async def on(target: Target) -> list[search.Hit]:
                return await model.search(
                    target.connection, customer, q, limit, within, via=target.name
                )

            hits = await readers(request).run(on)
            outcome = Outcome(None, None)
        else:

            async def read_model(conn: AsyncConnection[Any]) -> list[search.Hit]:
                # the event is folded as of `conn`'s snapshot (on the database that
                # answers); the model answers as of a later one on the same connection
                @asynccontextmanager
                async def held() -> AsyncIterator[AsyncConnection[Any]]:
                    yield conn

                return await model.search(held, customer, q, limit, within, via=None)

            hits, outcome = await read_after_event(request, read_model)
    else:

        async def read(conn: AsyncConnection[Any]) -> list[search.Hit]:
            return await search.search(conn, customer, q, limit, within=within)

        hits, outcome = await read_after_event(request, read)
    return respond(_search_body(customer, q, feature, [hit.to_json() for hit in hits]), outcome)


def _search_body(
    customer: str, q: str, feature: str | None, results: list[dict[str, Any]]
) -> dict[str, Any]:
    body: dict[str, Any] = {"customer": customer, "query": q}
    if feature is not None:
        body["feature"] = feature
    body["results"] = results
    return body


async def customer_entitlements(request: Request) -> Response:
    customer = api_params.customer_id(request.path_params["customer"])
    at = api_history.as_of(request)
    if at is not None:
        return await api_history.entitlements_as_of(request, customer, at)

    async def read(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
        return await search.entitlements(conn, customer)

    row, outcome = await read_after_event(request, read)
    if row is None and not outcome.stale:
        raise NotFound(f"no customer {customer} in the projection")
    settings = request.app.state.settings
    body = {"customer": customer} if row is None else render_entitlements(customer, row, settings)
    return respond(body, outcome)


async def list_customers(request: Request) -> Response:
    limit = api_params.limit(request.query_params.get("limit"), 50, 500)

    async def read(target: Target) -> list[search.Customer]:
        async with target.connection() as conn:
            return await search.customers(conn, limit)

    found = await readers(request).run(read)
    return json_response(
        {"customers": [{"id": c.id, "name": c.name, "email": c.email} for c in found]}
    )


async def put_movie(request: Request) -> Response:
    movie_id = api_params.path_movie_id(request)
    body = await api_params.json_body(request)
    try:
        movie = catalog.movie_from_json(movie_id, body)
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None
    async with pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        created = await catalog.put_movie(conn, movie)
        await _catalogue_written(request, conn)
    return json_response(movie.to_json(), 201 if created else 200)


async def delete_movie(request: Request) -> Response:
    movie_id = api_params.path_movie_id(request)
    async with pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        deleted = await catalog.delete_movie(conn, movie_id)
        await _catalogue_written(request, conn)
    if not deleted:
        raise NotFound(f"no movie {movie_id}")
    return Response(status_code=204)


async def movie_group(request: Request) -> Response:
    movie_id = api_params.path_movie_id(request)
    try:
        group = catalog.check_group(request.path_params["group"])
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None
    change = catalog.add_group if request.method == "PUT" else catalog.remove_group
    async with pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        movie = await change(conn, movie_id, group)
        await _catalogue_written(request, conn)
    if movie is None:
        raise NotFound(f"no movie {movie_id}")
    return json_response(movie.to_json())


async def _catalogue_written(request: Request, conn: AsyncConnection[Any]) -> None:
    """The write's count is news to this process's read model now, not when its
    notification arrives: the writer's own next search shows it (`api.watcher.announce`)."""
    request.app.state.watcher.announce(catalog=await catalog.writes(conn))


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    # Ready when reads can be served: with replicas, also while the primary is down.
    async def read(target: Target) -> bool:
        async with target.pool.connection(timeout=2.0) as conn:
            return await search.is_ready(conn)

    try:
        ready = await readers(request).run(read)
    except (psycopg.Error, PoolTimeout) as exc:
        raise ServiceUnavailable(f"postgres unavailable: {type(exc).__name__}") from None
    if not ready:
        raise ServiceUnavailable("schema not migrated: run `entitled migrate`")
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    await api_drift.measure(request)
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return FileResponse(OPENAPI, media_type="application/json")


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


# -- rendering -------------------------------------------------------------------------------


def render_entitlements(customer: str, row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The entitlements answer from one `search.entitlements` row (records as mirrored)."""
    products: dict[str, dict[str, Any]] = row["products"] or {}

    def product(pid: object) -> dict[str, Any]:
        record = products.get(pid) if isinstance(pid, str) else None
        metadata = metadata_of((record or {}).get("metadata"))
        return {
            "id": pid,
            "name": (record or {}).get("name"),
            "groups": list(groups_in(metadata, settings.group_metadata_key)),
            "movie_ids": list(movies_in(metadata, settings.movie_metadata_key)),
        }

    subscriptions = []
    for sub in row["subscriptions"]:
        items = sub.get("items") or []
        ends = [i.get("current_period_end") for i in items if i.get("current_period_end")]
        subscriptions.append(
            {
                "id": sub.get("id"),
                "status": sub.get("status"),
                "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
                "current_period_end": max(ends) if ends else None,
                "products": [product(i.get("product")) for i in items],
            }
        )
    purchases = []
    for buy in row["purchases"]:
        bought = [product(pid) for pid in buy.get("product_ids") or []]
        metadata = metadata_of(buy.get("metadata"))
        movie_ids = list(movies_in(metadata, settings.movie_metadata_key))
        movie_ids += [m for p in bought for m in p["movie_ids"] if m not in movie_ids]
        purchases.append(
            {
                "id": buy.get("id"),
                "kind": buy.get("kind"),
                "paid": bool(buy.get("paid")),
                "amount": buy.get("amount"),
                "movie_ids": movie_ids,
            }
        )
    record = row["customer_record"] or {}
    return {
        "customer": customer,
        "name": record.get("name"),
        "email": record.get("email"),
        "groups": row["groups"] or [],
        "movie_ids": row["movie_ids"] or [],
        "subscriptions": subscriptions,
        "purchases": purchases,
        "features": features_of(row, Policy.from_settings(settings)),
        "as_of": {"event_id": row["as_of_event"], "created": row["as_of_created"]},
    }


# -- errors, metrics, app --------------------------------------------------------------------


async def _on_error(request: Request, exc: Exception) -> Response:
    """The one place where an exception becomes an HTTP status and an error body."""
    if isinstance(exc, APIError):
        return json_response({"error": exc.message}, exc.status)
    if isinstance(exc, HTTPException):
        return json_response({"error": exc.detail}, exc.status_code)
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
        return json_response({"error": "schema not migrated: run `entitled migrate`"}, 503)
    if isinstance(exc, (psycopg.OperationalError, PoolTimeout)):
        log.warning("database unavailable: %s", exc)
        return json_response({"error": "database unavailable, retry later"}, 503)
    raise exc


class _HitLane:
    """`GET /v1/search` answered from the read model alone ahead of Starlette's router, when
    it can be (the model current and holding both parts: `ReadModel.answer_now`), with the
    same bytes as the route: the busiest request skips the router, the Request object and
    the exception layers. Anything else, or any doubt (a token refused, a parameter the
    route would reject, `as_of`, `min_event`, `feature`), goes on to the route, which
    answers as before. Runs inside the Host and Content-Type guards, timed as the route."""

    _ROUTE_ONLY = ("as_of", "min_event", "feature")

    def __init__(self, app: ASGIApp, model: ReadModel, readers: Readers, settings: Settings):
        self.app = app
        self.model = model
        self.readers = readers
        self.settings = settings
        self.route = Route("/v1/search", search_movies)  # the latency label (`_Timing`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/search" and scope["method"] == "GET":
            body = self._answer(scope)
            if body is not None:
                scope["route"] = self.route
                headers = [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> bytes | None:
        if self.model.max_customers <= 0:
            return None
        # as Starlette's QueryParams: latin-1, blanks kept, the last value of a name wins
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if any(name in params for name in self._ROUTE_ONLY):
            return None
        if refusal(self.settings, "read", header(scope, b"authorization") or None, None):
            return None
        try:
            customer = api_params.customer_id(params.get("customer"))
            q = api_params.query(params.get("q"))
            limit = api_params.limit(params.get("limit"), 20, 100)
            api_params.seconds(params.get("wait"), "wait", DEFAULT_WAIT_S, MAX_WAIT_S)
        except APIError:
            return None
        results = self.model.answer_now(customer, q, limit, None)
        if results is None:
            return None
        self.readers.answered()
        return orjson.dumps(_search_body(customer, q, None, results))


class _Timing:
    """Observe each HTTP request's latency under its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: APIMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)  # type: ignore[arg-type]
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)


def create_app(
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Starlette:
    """The read API for `settings.database_url` (which must be resolved by the caller).

    `extra_routes` (with their `on_close` clean-ups) are mounted by whoever composes the
    process: `entitled api` (`api.cli`) adds `POST /v1/refresh` from `ingest`."""
    url = read_url(settings)
    db_pool = create_pool(url)
    watch = Watcher(url)
    fanout = Fanout(watch.changes)
    model = ReadModel(watch, max_customers=settings.read_model_customers)
    reads = create_readers(settings, db_pool, watch)
    api_metrics = APIMetrics(db_pool)
    api_metrics.watch_readers(reads)
    api_metrics.watch_model(model)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db_pool.open(wait=False)
        watch.start()
        following = None
        publishing = asyncio.create_task(api_metrics.publish_every(), name="entitled-api-metrics")
        try:
            await db_pool.wait(timeout=30.0)
            await reads.open()
            if model.max_customers > 0:

                async def on_a_reader(step: Step) -> None:
                    await reads.run(lambda target: step(target.connection), count=False)

                following = asyncio.create_task(
                    model.follow(on_a_reader),
                    name="entitled-api-read-model",
                )
            yield
        finally:
            for task in (following, publishing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            for close in on_close:
                await close()
            await reads.close()
            await watch.stop()
            await db_pool.close()

    def admin(endpoint: Endpoint) -> Endpoint:
        return authorized(endpoint, "admin")

    routes = [
        # the busiest route first: Starlette tries the routes in order
        Route("/v1/search", authorized(search_movies)),
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/v1/customers", admin(list_customers)),
        Route("/v1/customers/{customer}/entitlements", authorized(customer_entitlements)),
        Route("/v1/customers/{customer}/history", authorized(api_history.customer_history)),
        Route("/v1/customers/{customer}/explain", authorized(api_history.customer_explain)),
        Route("/v1/customers/{customer}", admin(api_forget.forget_customer), methods=["DELETE"]),
        Route("/v1/changes", authorized(api_feed.changes)),
        Route("/v1/drift", admin(api_drift.drifting)),
        Route("/v1/changes/stream", authorized(api_feed.stream, query_token=True)),
        Route("/v1/movies/{movie_id}", admin(put_movie), methods=["PUT"]),
        Route("/v1/movies/{movie_id}", admin(delete_movie), methods=["DELETE"]),
        Route(
            "/v1/movies/{movie_id}/groups/{group}", admin(movie_group), methods=["PUT", "DELETE"]
        ),
        *extra_routes,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Any] = {
        exc: _on_error
        for exc in (
            APIError,
            HTTPException,
            psycopg.OperationalError,
            PoolTimeout,
            psycopg.errors.UndefinedTable,
            psycopg.errors.InvalidSchemaName,
        )
    }
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.settings = settings
    app.state.pool = db_pool
    app.state.watcher = watch
    app.state.fanout = fanout
    app.state.model = model
    app.state.readers = reads
    app.state.metrics = api_metrics
    # The last added runs first: every request is timed, then Host, then Content-Type, then
    # a search the read model answers alone.
    app.add_middleware(_HitLane, model=model, readers=reads, settings=settings)
    app.add_middleware(ContentTypeGuard)
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts)
    app.add_middleware(_Timing, metrics=api_metrics)
    return app
