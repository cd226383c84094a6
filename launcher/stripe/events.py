"""Realistic Stripe events built from Stripe's own example objects, for tests, demos and benches.

Every builder (here and in `launcher.stripe.payments`) deep-copies the matching object from
`stripe_fixtures/fixtures3.json` (Stripe's OpenAPI examples), so payloads carry the dozens of
fields a real webhook carries, and sets only what the caller asks for. Ids are generated when
not given, timestamps default to now.

    sub = subscription("sub_1", customer="cus_1", items=[("price_a", "prod_a")])
    body = encode(event("customer.subscription.created", sub))
    header = sign_header(body, "whsec_...")
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from launcher.stripe._objects import (
    Obj,
    copy_json,
    fresh,
    new_id,
    now,
    plan_object,
    price,
    price_object,
    product,
    template,
)
from launcher.stripe.payments import (
    charge,
    checkout_session,
    invoice,
    payment_intent,
    refund,
)

__all__ = [
    "CURRENT_API_VERSION",
    "LEGACY_API_VERSION",
    "charge",
    "checkout_session",
    "customer",
    "encode",
    "event",
    "invoice",
    "new_id",
    "payment_intent",
    "price",
    "product",
    "refund",
    "sign_header",
    "subscription",
]

CURRENT_API_VERSION = "2025-08-27.basil"
LEGACY_API_VERSION = "2024-06-20"


def customer(
    id: str | None = None,
    *,
    email: str | None = None,
    name: str | None = None,
    created: int | None = None,
) -> Obj:
    return fresh("customer", id or new_id("cus"), created, email=email, name=name, discount=None)


def subscription(
    id: str | None = None,
    *,
    customer: str,
    items: Sequence[tuple[str, str]],
    status: str = "active",
    created: int | None = None,
    period_start: int | None = None,
    period_end: int | None = None,
    cancel_at_period_end: bool = False,
    legacy: bool = False,
    item_ids: Sequence[str] | None = None,
) -> Obj:
    """A subscription with one item per `(price_id, product_id)`.

    Current shape: the billing period on each item and `price` on items. `legacy=True`: the
    pre-2025 shape, with `current_period_*` on the subscription and `plan` on the items.
    `item_ids` pins the `si_...` ids (so that an update keeps its items), else they are new.
    """
    obj = template("subscription")
    sub_id = id or new_id("sub")
    ts = now() if created is None else created
    start = ts if period_start is None else period_start
    end = start + 30 * 86400 if period_end is None else period_end
    template_item = obj["items"]["data"][0]
    data = []
    for n, (price_id, product_id) in enumerate(items):
        item = copy_json(template_item)
        item.update(
            id=item_ids[n] if item_ids is not None else new_id("si"),
            created=ts,
            subscription=sub_id,
            billing_thresholds=None,
        )
        if legacy:
            del item["price"], item["current_period_start"], item["current_period_end"]
            item["plan"] = plan_object(price_id, product_id, ts)
        else:
            del item["plan"]
            item.update(
                price=price_object(price_id, product_id, ts),
                current_period_start=start,
                current_period_end=end,
            )
        data.append(item)
    obj["items"].update(data=data, url=f"/v1/subscription_items?subscription={sub_id}")
    obj.update(
        id=sub_id,
        customer=customer,
        status=status,
        created=ts,
        start_date=ts,
        billing_cycle_anchor=start,
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=end if cancel_at_period_end else None,
        canceled_at=None,
        ended_at=None,
        trial_start=None,
        trial_end=None,
        pause_collection=None,
        pending_update=None,
        next_pending_invoice_item_invoice=None,
        transfer_data=None,
    )
    if status in ("canceled", "incomplete_expired"):
        obj.update(canceled_at=ts, ended_at=ts)
    if legacy:
        obj.update(current_period_start=start, current_period_end=end)
    return obj


def event(
    type: str,
    obj: Obj,
    *,
    id: str | None = None,
    created: int | None = None,
    api_version: str | None = CURRENT_API_VERSION,
    account: str | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
) -> Obj:
    """Wrap `obj` in the event envelope Stripe POSTs (`data.object` is a copy of `obj`)."""
    evt = template("event")
    data: Obj = {"object": copy_json(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    evt.update(
        id=id or new_id("evt"),
        type=type,
        created=now() if created is None else created,
        api_version=api_version,
        data=data,
        livemode=False,
        pending_webhooks=1,
        request={"id": new_id("req"), "idempotency_key": secrets.token_hex(16)},
    )
    if account is not None:
        evt["account"] = account
    return evt


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes, as Stripe would POST them."""
    return orjson.dumps(event)


def sign_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value Stripe would send for `payload`."""
    t = now() if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    mac = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
