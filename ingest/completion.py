"""Which logged events lack what the projection needs, and which API read completes them.

Pure: no network. The hydrator asks `needed(event)` of every event Stripe sent (source
`webhook` or `reconcile`); `refresh` asks `fetch_for_id(id)` of the ids it is given. Both
use the same reads, so an object is expanded the same way whoever fetches it:

- thin event notifications (`"object": "v2.core.event"`) of v1 resources the projection
  reads (`v1.` types; their `related_object` a customer, subscription, checkout session,
  payment intent, charge, refund, invoice, invoice payment, dispute, product, price or
  plan): the related object, by its `url`. Notifications about other objects (v2
  resources, tax ids, ...) are logged and not fetched.
- `checkout.session.completed` and `.async_payment_succeeded` whose session has no
  `line_items` (Stripe never sends them in an event; they name the product bought): the
  session with `expand[]=line_items`.
- `entitlements.active_entitlement_summary.updated` whose list says `has_more` (Stripe lists 10
  at most): the customer's active entitlements listed to the end (`ingest.summary`).
- `invoice.paid` and `.payment_succeeded` of a paid amount whose invoice has neither
  `payments` (only present when expanded) nor the pre-2025 `payment_intent`: the invoice
  with `expand[]=payments`, which links it to the payment a refund or dispute names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest import summary
from ingest.keys import is_notification, related_object
from ingest.snapshots import OBJECT_TYPES
from ingest.summary import summary_customer


@dataclass(frozen=True)
class Fetch:
    """One API read: GET `path` with `params`; `object_id` is the object it returns."""

    path: str
    object_id: str
    reason: str  # "thin", "line_items", "payments", "refresh"
    params: Mapping[str, Any] = field(default_factory=dict)


# Resource path and expansions by object type; prefixes of ids for `refresh`.
_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "customer": ("/v1/customers", ()),
    "subscription": ("/v1/subscriptions", ()),
    "checkout.session": ("/v1/checkout/sessions", ("line_items",)),
    "payment_intent": ("/v1/payment_intents", ()),
    "charge": ("/v1/charges", ()),
    "refund": ("/v1/refunds", ()),
    "invoice": ("/v1/invoices", ("payments",)),
    "invoice_payment": ("/v1/invoice_payments", ()),
    "dispute": ("/v1/disputes", ()),
    "product": ("/v1/products", ()),
    "price": ("/v1/prices", ()),
    "plan": ("/v1/plans", ()),
}
ID_PREFIXES: dict[str, str] = {
    "cus_": "customer",
    "sub_": "subscription",
    "cs_": "checkout.session",
    "pi_": "payment_intent",
    "ch_": "charge",
    "py_": "charge",
    "re_": "refund",
    "pyr_": "refund",
    "in_": "invoice",
    "inpay_": "invoice_payment",
    "dp_": "dispute",
    "du_": "dispute",
    "prod_": "product",
    "price_": "price",
    "plan_": "plan",
}
_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
_CHECKOUT_PAID = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
_INVOICE_PAID = ("invoice.paid", "invoice.payment_succeeded")


def _expand(object_type: str) -> dict[str, Any]:
    expand = _PATHS[object_type][1]
    return {"expand": list(expand)} if expand else {}


def _object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    return obj if isinstance(obj, Mapping) else {}


def needed(event: Mapping[str, Any]) -> Fetch | None:
    """The read that completes `event`, or None when it carries all the projection needs."""
    if is_notification(event):
        return _for_notification(event)
    customer = summary_customer(event)
    if customer is not None:
        return Fetch(summary.PATH, customer, summary.REASON, {"customer": customer})
    event_type = event.get("type")
    obj = _object(event)
    obj_id = obj.get("id")
    if not isinstance(obj_id, str) or not _ID.fullmatch(obj_id):
        return None
    if event_type in _CHECKOUT_PAID and not isinstance(obj.get("line_items"), Mapping):
        return Fetch(
            f"/v1/checkout/sessions/{obj_id}", obj_id, "line_items", _expand("checkout.session")
        )
    if (
        event_type in _INVOICE_PAID
        and obj.get("amount_paid") != 0
        and not isinstance(obj.get("payments"), Mapping)
        and "payment_intent" not in obj
    ):
        return Fetch(f"/v1/invoices/{obj_id}", obj_id, "payments", _expand("invoice"))
    return None


def _for_notification(event: Mapping[str, Any]) -> Fetch | None:
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type.startswith("v1."):
        return None  # v2 resources: the projection reads none of them
    related = related_object(event)
    object_type, object_id, url = related.get("type"), related.get("id"), related.get("url")
    if object_type not in OBJECT_TYPES or object_type not in _PATHS:
        return None
    if not (isinstance(object_id, str) and _ID.fullmatch(object_id) and isinstance(url, str)):
        return None
    if not url.startswith("/v1/"):
        return None  # never follow a URL off the API base
    return Fetch(url, object_id, "thin", _expand(str(object_type)))


def fetch_for_id(object_id: str) -> Fetch | None:
    """The read of the object `object_id` (`cus_...`, `sub_...`, `cs_...`, `in_...`,
    `pi_...`, ...), or None for an id whose prefix names nothing the projection reads (or
    that is not a Stripe id: it goes into a URL path)."""
    if not _ID.fullmatch(object_id):
        return None
    for prefix, object_type in ID_PREFIXES.items():
        if object_id.startswith(prefix) and len(object_id) > len(prefix):
            path = _PATHS[object_type][0]
            return Fetch(f"{path}/{object_id}", object_id, "refresh", _expand(object_type))
    return None
