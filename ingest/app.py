"""The webhook service: `POST /webhooks/stripe` into the log, plus health and metrics.

Order of checks: size (Content-Length, then the streamed body under a cap), UTF-8 (the
stripe library verifies signatures over text), the signature. Once the signature is good the
body is Stripe's and is logged byte for byte whatever it holds (issue 19, point 10): a body
that is not a well-formed event (a number out of range, a lone surrogate, deep nesting, a
missing field) is logged, counted as `accepted_malformed` and answered 200; the fold reads it
tolerantly or parks it with the reason. 200 is answered only after the broker acknowledged
the write (docs/architecture.md, "The log is the truth").

The webhook is the one busy route: it is served as a plain ASGI app (`_Webhook`) that the
app's middleware (`_WebhookLane`) calls ahead of Starlette's router, so a webhook skips the
router, the exception layer and the Request/Response objects (about 20 us of the ~360 us
of server CPU a webhook cost, bench/ingest.py). The route stays in the
router, holding the same ASGI app, so other methods still get 405.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entitled.settings import Settings
from ingest.errors import (
    BadRequest,
    IngestError,
    InvalidSignature,
    LogUnavailable,
    PayloadTooLarge,
)
from ingest.keys import created_at, event_headers, routing_key
from ingest.metrics import CONTENT_TYPE, IngestMetrics
from ingest.producer import EventProducer
from ingest.verify import decode_body, read_signed, verify_signature

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stripe"
_GC_YOUNG = 20_000  # net allocations between collections of the young generation (lifespan)

# Object families the projections mirror today; other types are still written to the log
# (a later fold may want them) but logged, so a misconfigured endpoint is noticed.
KNOWN_TYPE_PREFIXES = (
    "customer.",
    "invoice.",
    "checkout.session.",
    "payment_intent.",
    "charge.",
    "product.",
    "price.",
    "entitlements.",
    "subscription_schedule.",
    # folded (refunds, and the invoice payments that link an invoice to its payment intent)
    "refund.",
    "invoice_payment.",
)


def _json(
    body: dict[str, object], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


class _Disconnected(Exception):
    """The client went away before its body was read."""


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case, as ASGI gives names), as Starlette's
    `Headers.get` reads it (latin-1)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_capped(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing anything over `limit` bytes without buffering it first."""
    declared = _header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(
    send: Send, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """What Starlette's `Response(body, status, media_type="application/json")` sends."""
    headers = [(b"content-length", b"%d" % len(body)), *extra]
    if body:
        headers.append((b"content-type", b"application/json"))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def _unreadable_key(raw: bytes) -> str:
    """The message key of a signed body that names no id at all: its digest, so such bodies
    spread over partitions and one never parks another in the fold."""
    return "unreadable_" + hashlib.sha256(raw).hexdigest()[:24]


def _outcome(exc: IngestError) -> str:
    if isinstance(exc, InvalidSignature):
        return "bad_signature"
    if isinstance(exc, BadRequest):
        return "malformed"
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, LogUnavailable):
        return "unavailable"
    return "error"


def _lifespan(producer: EventProducer) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Start the producer with the app and flush it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await producer.start()
        # A full collection walks every object the imports made (stripe alone brings tens
        # of thousands) and stalled all requests for 20-70 ms, the bulk of our p99 at low
        # rates. Freezing what exists after startup keeps it out of later collections.
        if gc.get_freeze_count() == 0:  # once per process: tests start many apps
            gc.collect()
            gc.freeze()
            # The young generation's default threshold (700 net allocations) was crossed
            # every few webhooks under load, when the objects of the requests in flight were
            # alive: each collection walked them and promoted them, so the older
            # generations were collected often too (~9 % of the CPU per webhook). At
            # 20,000, most of a collection's young objects are dead (freed by reference
            # counting) and it runs a few times a minute.
            gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            await producer.stop()

    return lifespan


def create_app(settings: Settings, producer: EventProducer | None = None) -> Starlette:
    """The ingest ASGI app; the producer (built from `settings` if not given) lives in the
    app's lifespan, so it is started once per process and flushed on shutdown."""
    producer = producer if producer is not None else EventProducer(settings)
    metrics = IngestMetrics(producer)
    webhook = _Webhook(settings, producer, metrics)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if await producer.ready():
            return _json({"status": "ready"})
        return _json({"status": "kafka unavailable"}, 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=_lifespan(producer),
    )
    app.add_middleware(_WebhookLane, webhook=webhook)
    app.state.metrics = metrics
    app.state.producer = producer
    return app


class _Webhook:
    """`POST /webhooks/stripe` as an ASGI app (module doc): the body under the size cap, the
    signature, the write, and the answer; an `IngestError` becomes its status and an
    `{"error": ...}` body here."""

    def __init__(self, settings: Settings, producer: EventProducer, metrics: IngestMetrics):
        self.producer = producer
        self.metrics = metrics
        self.limit = settings.max_body_bytes
        self.secrets = settings.webhook_secrets
        self.tolerance = settings.signature_tolerance_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            event_id = await self._write(scope, receive)
        except _Disconnected:
            self.metrics.requests["disconnected"] += 1
            await _answer(send, 400, b"")
        except IngestError as exc:
            await self._refuse(send, exc)
        else:
            await _answer(send, 200, orjson.dumps({"received": True, "id": event_id}))

    async def _write(self, scope: Scope, receive: Receive) -> str | None:
        """Verify and write the webhook; the event's id (None when it names none)."""
        received_at = time.time()
        raw = await read_capped(scope, receive, self.limit)
        payload = decode_body(raw)
        verify_signature(payload, _header(scope, b"stripe-signature"), self.secrets, self.tolerance)
        # From here the body is Stripe's: it is logged as received whatever it says.
        signed = read_signed(payload)
        event = signed.event
        event_id = event.get("id") if isinstance(event.get("id"), str) else None
        if signed.problem is not None:
            log.warning("logged signed body %s as received: %s", event_id, signed.problem)
        elif not event["type"].removeprefix("v1.").startswith(KNOWN_TYPE_PREFIXES):
            # thin notifications name v1 resources' events with a `v1.` prefix
            log.info("accepted event %s of unhandled type %s", event_id, event["type"])
        started = time.perf_counter()
        await self.producer.publish(
            raw,
            key=routing_key(event) or _unreadable_key(raw),
            headers=event_headers(event, source="webhook", received_at=received_at),
            created=created_at(event),  # a retry of an event older than a forget: shredded
        )
        metrics = self.metrics
        metrics.produced(time.perf_counter() - started)
        metrics.requests["accepted" if signed.problem is None else "accepted_malformed"] += 1
        metrics.bytes += len(raw)
        return event_id

    async def _refuse(self, send: Send, exc: IngestError) -> None:
        self.metrics.requests[_outcome(exc)] += 1
        extra = []
        if isinstance(exc, LogUnavailable):
            extra.append((b"retry-after", str(exc.retry_after_s).encode()))
            log.warning("answered 503: %s", exc.message)
        else:
            log.info("rejected webhook (%d): %s", exc.status, exc.message)
        await _answer(send, exc.status, orjson.dumps({"error": exc.message}), extra)


class _WebhookLane:
    """Middleware: `POST /webhooks/stripe` straight to `_Webhook`, ahead of the router (module
    doc); everything else, and every other method on that path, through the app."""

    def __init__(self, app: ASGIApp, webhook: _Webhook) -> None:
        self.app = app
        self.webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.webhook(scope, receive, send)
        else:
            await self.app(scope, receive, send)
