"""`POST /v1/refresh` as a route any Starlette app can mount: `entitled api` (`api.cli`)
mounts it beside the read API. It checks the bearer token itself (`ENTITLED_API_TOKEN`), so it
is safe wherever it is mounted.

Body `{"ids": ["sub_...", "cs_...", ...]}` (at most `MAX_IDS`); answer 200
`{"events": [{"id", "event_id", "outcome"}]}` once Kafka acknowledged every snapshot
(outcomes as `ingest.refresh.fetch`: written, no_state, not_found, unknown_id); 400 for a bad body,
401 without the token, 502 when Stripe fails, 503 without `STRIPE_API_KEY` or when Kafka is
unavailable. The producer and the API client start on the first request (a mounted app gets
no lifespan of its own); `close()` belongs in the host app's lifespan.
"""

from __future__ import annotations

import asyncio
import hmac

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from entitled.settings import Settings
from ingest.errors import ConfigurationError, LogUnavailable
from ingest.producer import EventProducer
from ingest.refresh.fetch import refresh
from ingest.stripe_api import StripeApi

MAX_IDS = 100


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class RefreshEndpoint:
    """The endpoint with its lazily started producer and Stripe client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._api: StripeApi | None = None
        self._lock = asyncio.Lock()

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
                self._api = StripeApi(s.stripe_api_key, base=s.stripe_api_base, rps=s.backfill_rps)
            if self._producer is None:
                producer = EventProducer(self.settings)
                await producer.start()
                self._producer = producer
            return self._api, self._producer

    def _authorized(self, request: Request) -> bool:
        token = self.settings.api_token
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )

    async def handle(self, request: Request) -> Response:
        if not self._authorized(request):
            return _json({"error": "a valid bearer token is required"}, 401)
        try:
            body = orjson.loads(await request.body())
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
        except ConfigurationError as exc:  # no Kafka named for this process
            return _json({"error": str(exc)}, 503)
        except stripe.StripeError as exc:
            return _json({"error": f"Stripe answered {exc.http_status}"}, 502)
        events = [
            {"id": r.object_id, "event_id": r.event_id, "outcome": r.outcome} for r in results
        ]
        return _json({"events": events})
