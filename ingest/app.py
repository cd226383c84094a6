"""The webhook service: `POST /webhooks/stripe` into the log, plus health and metrics.

Order of checks: size (Content-Length, then the streamed body under a cap), UTF-8 (the
stripe library verifies signatures over text), the signature. Once the signature is good the
body is Stripe's and is logged byte for byte whatever it holds (issue 19, point 10): a body
that is not a well-formed event (a number out of range, a lone surrogate, deep nesting, a
missing field) is logged, counted as `accepted_malformed` and answered 200; the fold reads it
tolerantly or parks it with the reason. 200 is answered only after the broker acknowledged
the write (docs/architecture.md, "The log is the truth").
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

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


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over `limit` bytes without buffering it first."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
    secrets = settings.webhook_secrets
    tolerance = settings.signature_tolerance_s
    accepted = metrics.requests.labels("accepted")  # bound once: labels() takes a lock

    async def webhook(request: Request) -> Response:
        received_at = time.time()
        try:
            raw = await read_capped(request, settings.max_body_bytes)
        except ClientDisconnect:
            metrics.requests.labels("disconnected").inc()
            return Response(status_code=400)
        payload = decode_body(raw)
        verify_signature(payload, request.headers.get("stripe-signature"), secrets, tolerance)
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
        await producer.publish(
            raw,
            key=routing_key(event) or _unreadable_key(raw),
            headers=event_headers(event, source="webhook", received_at=received_at),
            created=created_at(event),  # a retry of an event older than a forget: shredded
        )
        metrics.produce_latency.observe(time.perf_counter() - started)
        if signed.problem is None:
            accepted.inc()
        else:
            metrics.requests.labels("accepted_malformed").inc()
        metrics.bytes.inc(len(raw))
        return _json({"received": True, "id": event_id})

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if await producer.ready():
            return _json({"status": "ready"})
        return _json({"status": "kafka unavailable"}, 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def on_ingest_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, IngestError)
        metrics.requests.labels(_outcome(exc)).inc()
        headers = None
        if isinstance(exc, LogUnavailable):
            headers = {"Retry-After": str(exc.retry_after_s)}
            log.warning("answered 503: %s", exc.message)
        else:
            log.info("rejected webhook (%d): %s", exc.status, exc.message)
        return _json({"error": exc.message}, exc.status, headers)

    app = Starlette(
        routes=[
            Route("/webhooks/stripe", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={IngestError: on_ingest_error},
        lifespan=_lifespan(producer),
    )
    app.state.metrics = metrics
    app.state.producer = producer
    return app
