"""Kafka message key and headers of one Stripe event.

The key decides the partition, so all events of one customer land in one partition in
arrival order (docs/architecture.md, "The log is the truth"). Headers let consumers filter and trace
without parsing the body.

Two shapes of event reach the log: snapshot events (`"object": "event"`, the object under
`data.object`) and thin event notifications (`"object": "v2.core.event"`, only a
`related_object` reference, unversioned, the Connect account under `context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from entitled.bodies import epoch_seconds

SOURCES = ("webhook", "backfill", "reconcile", "hydrate", "refresh")
NOTIFICATION = "v2.core.event"


def is_notification(event: Mapping[str, Any]) -> bool:
    """True for a thin event notification (no `data`, a `related_object` reference)."""
    return event.get("object") == NOTIFICATION


def related_object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `related_object` of a thin notification (empty when absent or malformed)."""
    related = event.get("related_object")
    return related if isinstance(related, Mapping) else {}


def _object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    return obj if isinstance(obj, Mapping) else {}


def routing_key(event: Mapping[str, Any]) -> str:
    """The Stripe customer id the event concerns, else the id of its object.

    `data.object.customer` may be a string id or an expanded customer object; a customer
    object is keyed by its own id. Events with no customer (product, price, feature) are
    keyed by their object id, and an event with no object id at all by its own id, so every
    event has a stable key. A thin notification names no customer: it is keyed by its
    related object's id (a customer's own id for a customer); the hydrator's snapshot of
    that object is then keyed by the customer like any event.
    """
    if is_notification(event):
        related_id = related_object(event).get("id")
        if isinstance(related_id, str) and related_id:
            return related_id
        return str(event.get("id") or "")
    obj = _object(event)
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    if isinstance(customer, str) and customer:
        return customer
    own_id = obj.get("id")
    if isinstance(own_id, str) and own_id:
        return own_id
    return str(event.get("id") or "")


def created_at(event: Mapping[str, Any]) -> float:
    """When the event came to be (Stripe's `created`), Unix seconds; 0 when it names no
    usable time, as the fold reads it (such an event counts as older than any forget)."""
    return epoch_seconds(event.get("created")) or 0.0


def object_created_at(event: Mapping[str, Any]) -> float:
    """A snapshot event's origin for forgetting: its object's own `created` (a backfill or
    refresh of an object made before its customer was forgotten stays forgotten, one made
    after starts a new key), else the event's."""
    made = epoch_seconds(_object(event).get("created"))
    return created_at(event) if made is None else made


def event_headers(
    event: Mapping[str, Any], *, source: str, received_at: float
) -> list[tuple[str, bytes]]:
    """Headers for the log: event id, type, API version, Connect account, received-at, source.

    `stripe-account` is only present for Connect events (`account`, or a thin notification's
    `context`). `received-at` is Unix seconds with millisecond precision, as text, so any
    consumer can read it without a schema. A thin notification has no API version.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    headers = [
        ("stripe-event-id", _text(event.get("id"))),
        ("stripe-event-type", _text(event.get("type"))),
        ("stripe-api-version", _text(event.get("api_version"))),
    ]
    account = event.get("context") if is_notification(event) else event.get("account")
    if isinstance(account, str) and account:
        headers.append(("stripe-account", account.encode()))
    headers.append(("received-at", f"{received_at:.3f}".encode()))
    headers.append(("source", source.encode()))
    return headers


def _text(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else b""
