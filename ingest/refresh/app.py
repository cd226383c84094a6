"""`POST /v1/refresh` as a route any Starlette app can mount: `entitled api` (`api.cli`)
mounts it beside the read API. It checks the admin bearer token itself (`entitled.tokens`:
`ENTITLED_ADMIN_TOKEN`, or the read token when no admin token is set), so it is safe wherever
it is mounted.

Each call spends the merchant's Stripe rate limit (which their checkout and the hydrator also
use), so the body is capped at `MAX_BODY` bytes (413) and at most `MAX_IN_FLIGHT` refreshes
run at once per process; beyond that the answer is 429 with Retry-After.

Body `{"ids": ["sub_...", "cs_...", ...]}` (at most `MAX_IDS`); answer 200
`{"events": [{"id", "event_id", "outcome"}]}` once Kafka acknowledged every snapshot
(outcomes as `ingest.refresh.fetch`: written, no_state, not_found, unknown_id); 400 for a bad
body, 401 without the token, 403 with only the read token, 413 for a body over `MAX_BODY`, 429
when `MAX_IN_FLIGHT` run, 502 when Stripe fails, 503 without `STRIPE_API_KEY` or when Kafka is
unavailable. The producer and the API client start on the first request (a mounted app gets
no lifespan of its own); `close()` belongs in the host app's lifespan.
"""

from __future__ import annotations

import asyncio

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from entitled import tokens
from entitled.crypto import CryptoError
from entitled.settings import Settings
from ingest.errors import ConfigurationError, LogUnavailable
from ingest.producer import EventProducer
from ingest.refresh.fetch import refresh
from ingest.stripe_api import StripeApi

MAX_IDS = 100
MAX_BODY = 64 * 1024
MAX_IN_FLIGHT = 2
RETRY_AFTER_S = 2  # a refresh takes about a second per few ids against Stripe


class _TooLarge(Exception):
    pass


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class RefreshEndpoint:
    """The endpoint with its lazily started producer and Stripe client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._api: StripeApi | None = None
        self._lock = asyncio.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Refreshes running now (their bodies being read included)."""
        return self._in_flight

    def route(self, path: str = "/v1/refresh") -> Route:
        return Route(path, self.handle, methods=["POST"])

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._api is not None:
            await self._api.close()

    async def _clients(self) -> tuple[StripeApi, EventProducer]:
        async with self._lock:
            if self._api is None:
                s = self.settings
                self._api = StripeApi.from_settings(s)
            if self._producer is None:
                producer = EventProducer(self.settings)
                await producer.start()
                self._producer = producer
            return self._api, self._producer

    def _refused(self, request: Request) -> Response | None:
        wanted = tokens.accepted(self.settings, "admin")
        given = tokens.bearer(request.headers.get("authorization"))
        if not wanted or tokens.matches(given, wanted):
            return None
        if tokens.matches(given, tokens.accepted(self.settings, "read")):
            return _json({"error": "this needs the admin token (ENTITLED_ADMIN_TOKEN)"}, 403)
        return _json({"error": "a valid bearer token is required"}, 401)

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise _TooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise _TooLarge
        return bytes(body)

    async def handle(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self._in_flight >= MAX_IN_FLIGHT:
            return Response(
                orjson.dumps({"error": f"{MAX_IN_FLIGHT} refreshes are running; retry later"}),
                429,
                headers={"Retry-After": str(RETRY_AFTER_S)},
                media_type="application/json",
            )
        # Counted from here (one event loop: no race between the check and the count), so
        # reading a slow body also holds a slot.
        self._in_flight += 1
        try:
            return await self._refresh(request)
        finally:
            self._in_flight -= 1

    async def _refresh(self, request: Request) -> Response:
        try:
            body = orjson.loads(await self._body(request))
        except _TooLarge:
            return _json({"error": f"body is larger than {MAX_BODY} bytes"}, 413)
        except orjson.JSONDecodeError:
            return _json({"error": "body is not JSON"}, 400)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not (
            isinstance(ids, list)
            and 0 < len(ids) <= MAX_IDS
            and all(isinstance(i, str) and i for i in ids)
        ):
            return _json({"error": f"expected {{'ids': [1 to {MAX_IDS} object ids]}}"}, 400)
        if not self.settings.stripe_api_key:
            return _json({"error": "STRIPE_API_KEY is not configured"}, 503)
        try:
            api, producer = await self._clients()
            results = await refresh(self.settings, ids, api=api, producer=producer)
        except LogUnavailable as exc:
            return _json({"error": exc.message}, 503)
        except (ConfigurationError, CryptoError) as exc:  # no Kafka or master key here
            return _json({"error": str(exc)}, 503)
        except stripe.StripeError as exc:
            return _json({"error": f"Stripe answered {exc.http_status}"}, 502)
        events = [
            {"id": r.object_id, "event_id": r.event_id, "outcome": r.outcome} for r in results
        ]
        return _json({"events": events})
