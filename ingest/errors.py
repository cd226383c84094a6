"""Errors of the ingest stage, each carrying the HTTP status the webhook answers with.

The webhook (`ingest.app._Webhook`) maps them to their status and `{"error": "..."}`
bodies, so the code under it just raises. Messages are written for the sender and never
contain a secret.
"""

from __future__ import annotations

from entitled.errors import StatusError


class IngestError(StatusError):
    """Base of every ingest error; `status` is the HTTP status it maps to."""


class BadRequest(IngestError):
    """The request cannot be taken as a Stripe event; retrying it will not help."""

    status = 400


class InvalidSignature(BadRequest):
    """Missing, garbled, stale or non-matching `Stripe-Signature`."""


class MalformedEvent(BadRequest):
    """Signed correctly but not a Stripe event: not UTF-8 JSON, not an object, fields missing."""


class PayloadTooLarge(IngestError):
    """The body is over `settings.max_body_bytes`."""

    status = 413


class LogUnavailable(IngestError):
    """Kafka did not acknowledge the write in time; the event may not be in the log."""

    status = 503
    retry_after_s: int = 5


class ConfigurationError(IngestError):
    """The service cannot start as configured (for example: no webhook secret)."""
