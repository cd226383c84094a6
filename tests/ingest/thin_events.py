"""Thin event notifications (`"object": "v2.core.event"`), as event destinations send them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

_PATHS = {
    "customer": "/v1/customers",
    "subscription": "/v1/subscriptions",
    "checkout.session": "/v1/checkout/sessions",
    "invoice": "/v1/invoices",
    "payment_intent": "/v1/payment_intents",
    "charge": "/v1/charges",
    "refund": "/v1/refunds",
    "product": "/v1/products",
    "price": "/v1/prices",
}


def notification(
    type: str,
    related_id: str,
    related_type: str,
    *,
    id: str | None = None,
    context: str | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """A `v1.`-prefixed thin notification about the v1 object `related_id` of `related_type`."""
    moment = created or datetime.now(UTC)
    body: dict[str, Any] = {
        "id": id or f"evt_test_{secrets.token_hex(12)}",
        "object": "v2.core.event",
        "type": type,
        "livemode": False,
        "created": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "related_object": {
            "id": related_id,
            "type": related_type,
            "url": f"{_PATHS[related_type]}/{related_id}",
        },
        "reason": {"type": "request", "request": {"id": "req_test", "idempotency_key": None}},
    }
    if context is not None:
        body["context"] = context
    return body
