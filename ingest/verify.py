"""Turn a received webhook body into a verified Stripe event, or say precisely why not.

Signature checking is the stripe library's own (`WebhookSignature.verify_header`: v1
scheme, constant-time compare, timestamp tolerance); we only loop over the configured
secrets so that a rotation has no gap. Nothing here echoes a secret. Its names are bound at
import: `stripe.X` goes through the package's lazy `__getattr__` (an import_module call)
at every use.

Both payloads Stripe's event destinations send are accepted, with the same signature
scheme: snapshot events (`"object": "event"`, the object under `data.object`) and thin
event notifications (`"object": "v2.core.event"`: a `related_object` reference, no `data`,
an ISO `created`, `v1.`-prefixed types for v1 resources). A notification's shape is checked
by the stripe library's own parser (`EventNotification.from_json`, which
`StripeClient.parse_event_notification` runs after the same signature check), so we accept
what the library can later read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe
from stripe import SignatureVerificationError, WebhookSignature
from stripe.v2.core import EventNotification

from entitled import bodies
from ingest.errors import InvalidSignature, MalformedEvent
from ingest.keys import NOTIFICATION

# Parsing a notification needs a client but sends nothing: no key of ours is involved.
_PARSER = stripe.StripeClient("sk_parse_only")


def decode_body(raw: bytes) -> str:
    """The body as text; Stripe signs the UTF-8 text of the JSON."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("body is not valid UTF-8") from None


def verify_signature(
    payload: str, header: str | None, secrets: Sequence[str], tolerance_s: int
) -> None:
    """Accept if any secret verifies the `Stripe-Signature` header; raise `InvalidSignature`."""
    if not header:
        raise InvalidSignature("missing Stripe-Signature header")
    if not secrets:
        raise InvalidSignature("no webhook secret is configured")
    stale = False
    for secret in secrets:
        try:
            WebhookSignature.verify_header(payload, header, secret, tolerance_s)
            return
        except SignatureVerificationError as exc:
            # The library checks the signature before the timestamp, so "tolerance" means
            # this secret matched and only the age is wrong.
            stale = stale or "tolerance" in str(exc)
            if "extract" in str(exc):
                raise InvalidSignature("garbled Stripe-Signature header") from None
            if "expected scheme" in str(exc):
                raise InvalidSignature("no v1 signature in Stripe-Signature header") from None
    if stale:
        raise InvalidSignature(f"signature timestamp is older than {tolerance_s} s")
    raise InvalidSignature("signature does not match the payload with any configured secret")


def parse_event(payload: str) -> dict[str, Any]:
    """The event as a dict, after checking the outer shape every consumer relies on;
    raises `MalformedEvent` saying what is wrong. Ingest calls it only after the signature
    is good, and then logs the body whatever it says (see `read_signed`)."""
    try:
        event = bodies.loads(payload)
    except bodies.UnreadableBody as exc:
        raise MalformedEvent(f"body is not valid JSON ({exc})") from None
    if not isinstance(event, dict):
        raise MalformedEvent("event is not a JSON object")
    for name in ("id", "type"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(f"event has no string {name!r}")
    if event.get("object") == NOTIFICATION:
        _check_notification(event)
        return event
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("event has no 'data.object' object")
    return event


@dataclass(frozen=True)
class Signed:
    """A correctly signed body as ingest logs it: what could be read of it, and, when it is
    not a well-formed event, why (the fold then parks it with a reason of its own)."""

    event: dict[str, Any]  # the event, or whatever JSON object could be read ({} if none)
    problem: str | None  # None for a well-formed event


def read_signed(payload: str) -> Signed:
    """Read a body whose signature is good. Never refuses it: Stripe retries a refused
    body for three days and then drops the event, while the log keeps it and the fold
    decides (issue 19, point 10). Content problems are reported, not raised."""
    try:
        return Signed(parse_event(payload), None)
    except MalformedEvent as exc:
        try:
            doc = bodies.loads(payload)
        except bodies.UnreadableBody:
            doc = None
        return Signed(doc if isinstance(doc, dict) else {}, exc.message)


def _check_notification(event: dict[str, Any]) -> None:
    """A thin notification the stripe library parses, with an ISO `created` and, when it
    names one, a related object with string id, type and url."""
    created = event.get("created")
    if not isinstance(created, str):
        raise MalformedEvent("event notification has no ISO 'created'")
    try:
        datetime.fromisoformat(created)
    except ValueError:
        raise MalformedEvent("event notification 'created' is not an ISO timestamp") from None
    related = event.get("related_object")
    if related is not None and not (
        isinstance(related, dict)
        and all(isinstance(related.get(k), str) and related[k] for k in ("id", "type", "url"))
    ):
        raise MalformedEvent("event notification 'related_object' needs string id, type, url")
    try:
        # what StripeClient.parse_event_notification runs after verifying the signature
        EventNotification.from_json(event, _PARSER)
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"{type(exc).__name__} {exc}"[:80]
        raise MalformedEvent(
            f"not an event notification the stripe library reads: {reason}"
        ) from None
