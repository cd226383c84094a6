"""Synthetic snapshot events: a listed Stripe object dressed as the event that would carry it.

Backfill writes each object it lists as an event of the object family's natural type, so
the fold treats it like any webhook (docs/architecture.md, "Snapshots"). The mapping, per list:

- products: `product.updated`; prices: `price.updated`; plans (opt-in): `plan.updated`;
  customers: `customer.updated`.
- subscriptions: `customer.subscription.deleted` when canceled or incomplete_expired, else
  `customer.subscription.updated`.
- checkout_sessions: `checkout.session.completed` when complete, `.expired` when expired;
  open sessions are skipped (no event describes them, and they grant nothing).
- payment_intents: `payment_intent.succeeded`, `.canceled`, `.processing`,
  `.requires_action`, `.amount_capturable_updated` (requires_capture), `.payment_failed`
  (requires_payment_method after an error), else `.created`.
- charges: `charge.refunded` when anything was refunded, else `charge.succeeded`, `.failed`
  or `.pending` by status.
- refunds: `refund.failed` when failed, else `refund.updated`.
- invoices: `invoice.paid`, `.voided`, `.marked_uncollectible`, `.finalized` (open), else
  `invoice.updated`.

The event id is `evt_backfill_` + 32 random hex digits: every read is a new snapshot
(issue 19, point 2). An id derived from the object's state made a read of an object that
returned to an earlier state (quantity 1 -> 0 -> 1, the last webhook lost) a duplicate of
the first read: the fold dropped it and the drift stayed for ever. A repeated backfill of
unchanged objects therefore logs them again; the fold writes nothing that differs.

`created` is the time the object was read from the API (`read_at`, Unix seconds), not the
object's own `created`: the fold orders an object's snapshots by `created`, and the state we
read is newer than every event Stripe created before we read it. So a backfill heals drift
(a lost `customer.subscription.updated` to `unpaid` is overwritten by the snapshot), while a
webhook created after the read still wins. `request` is `{"id": null, "idempotency_key": null}`, the
marker of an event that no API request caused.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

TypeOf = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class ListSpec:
    """One Stripe list endpoint backfill walks, and how its objects become events."""

    name: str
    path: str
    type_of: TypeOf
    params: Mapping[str, Any] = field(default_factory=dict)


def _fixed(event_type: str) -> TypeOf:
    return lambda obj: event_type


def _subscription(obj: Mapping[str, Any]) -> str:
    if obj.get("status") in ("canceled", "incomplete_expired"):
        return "customer.subscription.deleted"
    return "customer.subscription.updated"


def _checkout_session(obj: Mapping[str, Any]) -> str | None:
    return {"complete": "checkout.session.completed", "expired": "checkout.session.expired"}.get(
        str(obj.get("status"))
    )


def _payment_intent(obj: Mapping[str, Any]) -> str:
    status = obj.get("status")
    if status == "requires_payment_method" and obj.get("last_payment_error"):
        return "payment_intent.payment_failed"
    return {
        "succeeded": "payment_intent.succeeded",
        "canceled": "payment_intent.canceled",
        "processing": "payment_intent.processing",
        "requires_action": "payment_intent.requires_action",
        "requires_capture": "payment_intent.amount_capturable_updated",
    }.get(str(status), "payment_intent.created")


def _charge(obj: Mapping[str, Any]) -> str:
    if obj.get("refunded") or (obj.get("amount_refunded") or 0) > 0:
        return "charge.refunded"
    return {"failed": "charge.failed", "pending": "charge.pending"}.get(
        str(obj.get("status")), "charge.succeeded"
    )


def _refund(obj: Mapping[str, Any]) -> str:
    return "refund.failed" if obj.get("status") == "failed" else "refund.updated"


def _invoice(obj: Mapping[str, Any]) -> str:
    return {
        "paid": "invoice.paid",
        "void": "invoice.voided",
        "uncollectible": "invoice.marked_uncollectible",
        "open": "invoice.finalized",
    }.get(str(obj.get("status")), "invoice.updated")


LISTS: dict[str, ListSpec] = {
    spec.name: spec
    for spec in (
        ListSpec("products", "/v1/products", _fixed("product.updated")),
        ListSpec("prices", "/v1/prices", _fixed("price.updated")),
        ListSpec("plans", "/v1/plans", _fixed("plan.updated")),
        ListSpec("customers", "/v1/customers", _fixed("customer.updated")),
        # status=all: canceled subscriptions end entitlements, the fold must see them too.
        ListSpec("subscriptions", "/v1/subscriptions", _subscription, {"status": "all"}),
        # Line items name the product (movie) bought; they are only there when expanded.
        ListSpec(
            "checkout_sessions",
            "/v1/checkout/sessions",
            _checkout_session,
            {"expand": ["data.line_items"]},
        ),
        ListSpec("payment_intents", "/v1/payment_intents", _payment_intent),
        ListSpec("charges", "/v1/charges", _charge),
        ListSpec("refunds", "/v1/refunds", _refund),
        ListSpec("invoices", "/v1/invoices", _invoice),
    )
}

# `plans` duplicates recurring prices on real Stripe; it is for fakes without /v1/prices.
DEFAULT_LISTS = (
    "products",
    "prices",
    "customers",
    "subscriptions",
    "checkout_sessions",
    "payment_intents",
    "charges",
    "refunds",
    "invoices",
)


def _dispute(obj: Mapping[str, Any]) -> str:
    closed = obj.get("status") in ("won", "lost", "warning_closed")
    return "charge.dispute.closed" if closed else "charge.dispute.updated"


def _invoice_payment(obj: Mapping[str, Any]) -> str:
    return "invoice_payment.paid" if obj.get("status") == "paid" else "invoice_payment.updated"


# Event type by the object's own `object` field, for objects read one at a time (hydrate,
# refresh): the list's rule where a list exists.
_TYPE_OF_OBJECT: dict[str, TypeOf] = {
    "product": LISTS["products"].type_of,
    "price": LISTS["prices"].type_of,
    "plan": LISTS["plans"].type_of,
    "customer": LISTS["customers"].type_of,
    "subscription": LISTS["subscriptions"].type_of,
    "checkout.session": LISTS["checkout_sessions"].type_of,
    "payment_intent": LISTS["payment_intents"].type_of,
    "charge": LISTS["charges"].type_of,
    "refund": LISTS["refunds"].type_of,
    "invoice": LISTS["invoices"].type_of,
    "dispute": _dispute,
    "invoice_payment": _invoice_payment,
}
# The event family of an object type where it differs from the type itself.
_FAMILY = {"subscription": "customer.subscription", "dispute": "charge.dispute"}
OBJECT_TYPES = frozenset(_TYPE_OF_OBJECT)


def event_type_of(obj: Mapping[str, Any]) -> str | None:
    """The event type that describes `obj`'s current state, or None (an open checkout
    session, an object type we do not read). A deleted object (`"deleted": true`, what the
    API answers for a deleted customer or product) gives `<family>.deleted`."""
    object_type = obj.get("object")
    type_of = _TYPE_OF_OBJECT.get(object_type) if isinstance(object_type, str) else None
    if type_of is None:
        return None
    if obj.get("deleted") is True:
        return f"{_FAMILY.get(str(object_type), str(object_type))}.deleted"
    return type_of(obj)


# Stripe sends no event when a product's features change (nor for `entitlements.feature`):
# backfill and `reconcile --features` list `/v1/products/{id}/features` and log the whole list
# as one snapshot of this type, the product's id as the object id, so the fold can take it
# as the product's features at the time it was read.
PRODUCT_FEATURES_TYPE = "product.features.snapshot"
PRODUCT_FEATURES_OBJECT = "product_features"


def product_features_object(product_id: str, listed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The snapshot object of a product's features: every `product_feature` listed (each
    with its `entitlement_feature`, whose `lookup_key` and `active` the fold reads)."""
    return {
        "id": product_id,
        "object": PRODUCT_FEATURES_OBJECT,
        "product": product_id,
        "data": [dict(f) for f in listed],
        "has_more": False,
    }


def product_features_event(
    product_id: str,
    listed: Sequence[Mapping[str, Any]],
    *,
    api_version: str | None,
    read_at: int,
    previous: str | None = None,
) -> dict[str, Any]:
    """The `product.features.snapshot` event of a product's full feature list.

    Its id is `evt_features_` + a digest of the list (`features_digest`) + a digest of the
    `previous` snapshot's id: an unchanged list listed again is recognised by its digest (and
    not logged), while a list that changes back (A, B, A) gets a new id, which the fold's
    dedup would otherwise drop.
    """
    obj = product_features_object(product_id, listed)
    # the order Stripe lists features in is not a change
    state = sorted(listed, key=lambda f: str(f.get("id")))
    digest = snapshot_id({"id": product_id, "data": state}, prefix="")[:24]
    chain = hashlib.sha256((previous or "").encode()).hexdigest()[:8]
    return _envelope(
        f"{_FEATURES_PREFIX}{digest}{chain}", PRODUCT_FEATURES_TYPE, obj, api_version, read_at
    )


_FEATURES_PREFIX = "evt_features_"


def features_digest(event_id: str | None) -> str | None:
    """The feature-list digest in a `product.features.snapshot` id (None: not one)."""
    if not event_id or not event_id.startswith(_FEATURES_PREFIX):
        return None
    return event_id[len(_FEATURES_PREFIX) : len(_FEATURES_PREFIX) + 24]


def snapshot_id(obj: Mapping[str, Any], *, prefix: str = "evt_backfill_") -> str:
    """`<prefix><hash>` of the object's id and full state: same state, same id (the features
    mirror's list digest; snapshot events of a read take `read_id`)."""
    state = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(str(obj.get("id")).encode() + b"\0" + state).hexdigest()
    return f"{prefix}{digest[:32]}"


def read_id(prefix: str) -> str:
    """A new snapshot id for one read (`evt_backfill_`, `evt_refresh_` + 32 random hex
    digits): every read is a snapshot of its own, never a duplicate of an earlier read of
    the same state (see the module docstring). The hydrator does not use it: one source
    event gives one snapshot id (`hydrate_id`), however often it is re-read."""
    return f"{prefix}{secrets.token_hex(16)}"


def hydrate_id(source_event_id: str, object_id: str) -> str:
    """`evt_hydrate_<hash>` of the source event's id and the object completed from it: one
    source event gives one id, however often it is delivered, replayed or re-fetched."""
    digest = hashlib.sha256(f"{source_event_id}\0{object_id}".encode()).hexdigest()
    return f"evt_hydrate_{digest[:32]}"


def snapshot_event(
    spec: ListSpec, obj: Mapping[str, Any], *, api_version: str | None, read_at: int
) -> dict[str, Any] | None:
    """The snapshot event for `obj` read at `read_at` (Unix seconds), or None when no event
    type describes its state."""
    event_type = spec.type_of(obj)
    if event_type is None:
        return None
    return _envelope(read_id("evt_backfill_"), event_type, obj, api_version, read_at)


def read_event(
    obj: Mapping[str, Any],
    *,
    event_id: str,
    api_version: str | None,
    read_at: int,
    fallback_type: str | None = None,
) -> dict[str, Any] | None:
    """The snapshot event for one object read by id (hydrate, refresh), or None when no
    event type describes its state (see `event_type_of`) and no `fallback_type` is given
    (the hydrator gives the type of the event it completes)."""
    event_type = event_type_of(obj) or fallback_type
    if event_type is None:
        return None
    return _envelope(event_id, event_type, obj, api_version, read_at)


def _envelope(
    event_id: str,
    event_type: str,
    obj: Mapping[str, Any],
    api_version: str | None,
    read_at: int,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": api_version,
        "created": read_at,
        "data": {"object": obj},
        "livemode": bool(obj.get("livemode", False)),
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
