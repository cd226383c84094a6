"""The read API: search with availability, entitlements, customers, the catalogue, the page.

`create_app(settings)` builds one Starlette app holding one psycopg pool (opened in the
lifespan) and its own Prometheus registry. Routes only parse, call `projections.search` /
`projections.catalog` (all SQL lives there) and render; every failure is an exception mapped
to a status and an `{"error": "..."}` body by the one handler `_on_error`.

Interface additions to DESIGN.md:
- `GET /v1/customers?limit=50` lists customers known to the projection (id, name, email),
  for the page's picker.
- `GET /v1/customers/{id}/entitlements` answers 404 for a customer the projection knows
  nothing of (no customer object, entitlements row, subscription or purchase).
- When `ENTITLED_API_TOKEN` is set every `/v1/...` call needs `Authorization: Bearer <token>`;
  `/`, `/static/*`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json` stay open. The page
  takes the token from `?token=` (then keeps it in localStorage) or asks for it on a 401.
"""

from __future__ import annotations

import hmac
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from entitled.settings import Settings
from projections import catalog, search
from projections.api_errors import APIError, BadRequest, NotFound, ServiceUnavailable, Unauthorized
from projections.api_metrics import CONTENT_TYPE, APIMetrics
from projections.catalog import InvalidMovie
from projections.metadata import groups_in, metadata_of, movies_in

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.json"

MAX_Q = 200
MAX_CUSTOMER = 255
MAX_BODY = 64 * 1024
POOL_TIMEOUT_S = 5.0

Endpoint = Callable[[Request], Awaitable[Response]]


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


# -- parameters ------------------------------------------------------------------------------


def _customer_id(value: str | None) -> str:
    if not value:
        raise BadRequest("customer is required")
    if len(value) > MAX_CUSTOMER:
        raise BadRequest(f"customer is longer than {MAX_CUSTOMER} characters")
    if "\x00" in value:
        raise BadRequest("customer contains a NUL character")
    return value


def _limit(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}")
    return limit


def _query(value: str | None) -> str:
    q = value or ""
    if len(q) > MAX_Q:
        raise BadRequest(f"q is longer than {MAX_Q} characters")
    # Postgres text cannot hold NUL; to a text search it is just a separator.
    return q.replace("\x00", " ")


async def _json_body(request: Request) -> object:
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


def _path_movie_id(request: Request) -> str:
    try:
        return catalog.check_movie_id(request.path_params["movie_id"])
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None


# -- routes ----------------------------------------------------------------------------------


def _authorized(endpoint: Endpoint) -> Endpoint:
    """Require the bearer token on a `/v1` endpoint when the app has one configured."""

    async def guarded(request: Request) -> Response:
        token: str | None = request.app.state.settings.api_token
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                raise Unauthorized("a valid bearer token is required")
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    return guarded


async def search_movies(request: Request) -> Response:
    params = request.query_params
    customer = _customer_id(params.get("customer"))
    q = _query(params.get("q"))
    limit = _limit(params.get("limit"), 20, 100)
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        hits = await search.search(conn, customer, q, limit)
    return _json({"customer": customer, "query": q, "results": [hit.to_json() for hit in hits]})


async def customer_entitlements(request: Request) -> Response:
    customer = _customer_id(request.path_params["customer"])
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        row = await search.entitlements(conn, customer)
    if row is None:
        raise NotFound(f"no customer {customer} in the projection")
    return _json(render_entitlements(customer, row, request.app.state.settings))


async def list_customers(request: Request) -> Response:
    limit = _limit(request.query_params.get("limit"), 50, 500)
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        found = await search.customers(conn, limit)
    return _json({"customers": [{"id": c.id, "name": c.name, "email": c.email} for c in found]})


async def put_movie(request: Request) -> Response:
    movie_id = _path_movie_id(request)
    body = await _json_body(request)
    try:
        movie = catalog.movie_from_json(movie_id, body)
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        created = await catalog.put_movie(conn, movie)
    return _json(movie.to_json(), 201 if created else 200)


async def delete_movie(request: Request) -> Response:
    movie_id = _path_movie_id(request)
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        deleted = await catalog.delete_movie(conn, movie_id)
    if not deleted:
        raise NotFound(f"no movie {movie_id}")
    return Response(status_code=204)


async def movie_group(request: Request) -> Response:
    movie_id = _path_movie_id(request)
    try:
        group = catalog.check_group(request.path_params["group"])
    except InvalidMovie as exc:
        raise BadRequest(str(exc)) from None
    change = catalog.add_group if request.method == "PUT" else catalog.remove_group
    async with _pool(request).connection(timeout=POOL_TIMEOUT_S) as conn:
        movie = await change(conn, movie_id, group)
    if movie is None:
        raise NotFound(f"no movie {movie_id}")
    return _json(movie.to_json())


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        async with _pool(request).connection(timeout=2.0) as conn:
            ready = await search.is_ready(conn)
    except (psycopg.Error, PoolTimeout) as exc:
        raise ServiceUnavailable(f"postgres unavailable: {type(exc).__name__}") from None
    if not ready:
        raise ServiceUnavailable("schema not migrated: run `entitled migrate`")
    return _json({"status": "ready"})


async def metrics(request: Request) -> Response:
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
        "as_of": {"event_id": row["as_of_event"], "created": row["as_of_created"]},
    }


# -- pool ----------------------------------------------------------------------------------

CHECK_IDLE_S = 1.0


class _IdleCheck:
    """The pool's `check`, only for connections idle longer than `CHECK_IDLE_S`.

    `AsyncConnectionPool.check_connection` on every `getconn` costs a round trip per search:
    a third of the work of a hot request. A connection handed back less than a second ago
    is almost surely fine; one idle longer (Postgres may have restarted meanwhile) is
    checked as before, and a broken one is replaced before any request sees it.
    """

    def __init__(self) -> None:
        self.returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: Any) -> None:
        returned = self.returned.get(conn)
        if returned is None or time.monotonic() - returned > CHECK_IDLE_S:
            await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: Any) -> None:
        self.returned[conn] = time.monotonic()


# -- errors, metrics, app --------------------------------------------------------------------


async def _on_error(request: Request, exc: Exception) -> Response:
    """The one place where an exception becomes an HTTP status and an error body."""
    if isinstance(exc, APIError):
        return _json({"error": exc.message}, exc.status)
    if isinstance(exc, HTTPException):
        return _json({"error": exc.detail}, exc.status_code)
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
        return _json({"error": "schema not migrated: run `entitled migrate`"}, 503)
    if isinstance(exc, (psycopg.OperationalError, PoolTimeout)):
        log.warning("database unavailable: %s", exc)
        return _json({"error": "database unavailable, retry later"}, 503)
    raise exc


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


def create_app(settings: Settings) -> Starlette:
    """The read API for `settings.database_url` (which must be resolved by the caller)."""
    if not settings.database_url:
        raise ValueError("settings.database_url is required by the read API")
    idle = _IdleCheck()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=2,
        max_size=10,
        open=False,
        check=idle.check,
        reset=idle.reset,
        kwargs={"autocommit": True},  # every statement stands alone: no BEGIN/COMMIT trips
        name="entitled-api",
    )
    api_metrics = APIMetrics(pool)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)
        try:
            await pool.wait(timeout=30.0)
            yield
        finally:
            await pool.close()

    v1 = _authorized
    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/v1/search", v1(search_movies)),
        Route("/v1/customers", v1(list_customers)),
        Route("/v1/customers/{customer}/entitlements", v1(customer_entitlements)),
        Route("/v1/movies/{movie_id}", v1(put_movie), methods=["PUT"]),
        Route("/v1/movies/{movie_id}", v1(delete_movie), methods=["DELETE"]),
        Route("/v1/movies/{movie_id}/groups/{group}", v1(movie_group), methods=["PUT", "DELETE"]),
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
    app.state.pool = pool
    app.state.metrics = api_metrics
    app.add_middleware(_Timing, metrics=api_metrics)
    return app
