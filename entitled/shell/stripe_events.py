"""Realistic Stripe events built from Stripe's own example objects, for tests, demos and benches.

Every builder deep-copies the matching object from `stripe_fixtures/fixtures3.json` (Stripe's
OpenAPI examples), so payloads carry the dozens of fields a real webhook carries, and sets only
what the caller asks for. Ids are generated when not given, timestamps default to now.

    sub = subscription("sub_1", customer="cus_1", items=[("price_a", "prod_a")])
    body = encode(event("customer.subscription.created", sub))
    header = sign_header(body, "whsec_...")
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import orjson

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

Obj = dict[str, Any]
_ALPHABET = string.ascii_letters + string.digits


@functools.cache
def _resources() -> Mapping[str, Obj]:
    text = resources.files("entitled.shell").joinpath("stripe_fixtures/fixtures3.json").read_text()
    loaded: Mapping[str, Obj] = json.loads(text)["resources"]
    return loaded


def _template(name: str) -> Obj:
    obj: Obj = _copy(_resources()[name])
    return obj


def _copy(obj: Obj) -> Obj:
    # A JSON round trip is a deep copy of JSON data, about ten times faster than deepcopy
    # (the benchmarks generate a million events).
    copied: Obj = orjson.loads(orjson.dumps(obj))
    return copied


def new_id(prefix: str) -> str:
    """A fresh Stripe-looking id such as `cus_Qx1...` (24 random characters)."""
    raw = int.from_bytes(secrets.token_bytes(18), "big")
    chars = []
    for _ in range(24):
        raw, digit = divmod(raw, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return prefix + "_" + "".join(chars)


def _now() -> int:
    return int(time.time())


def product(
    id: str | None = None,
    *,
    groups: str | None = None,
    movie_id: str | None = None,
    name: str = "WebFlicks package",
    active: bool = True,
    created: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Obj:
    """A product; `groups` goes to metadata `subscription_group`, `movie_id` to `movie_id`."""
    obj = _template("product")
    ts = _now() if created is None else created
    meta = dict(metadata or {})
    if groups is not None:
        meta["subscription_group"] = groups
    if movie_id is not None:
        meta["movie_id"] = movie_id
    obj.update(
        id=id or new_id("prod"),
        name=name,
        active=active,
        created=ts,
        updated=ts,
        metadata=meta,
        default_price=None,
        description=None,
        package_dimensions=None,
        type="service",
    )
    return obj


def price(
    id: str | None = None,
    *,
    product: str,
    recurring: bool = True,
    unit_amount: int = 999,
    created: int | None = None,
    active: bool = True,
) -> Obj:
    obj = _template("price")
    obj.update(
        id=id or new_id("price"),
        product=product,
        active=active,
        created=_now() if created is None else created,
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        transform_quantity=None,
        custom_unit_amount=None,
    )
    if not recurring:
        obj.update(recurring=None, type="one_time")
    return obj


def customer(
    id: str | None = None,
    *,
    email: str | None = None,
    name: str | None = None,
    created: int | None = None,
) -> Obj:
    obj = _template("customer")
    obj.update(
        id=id or new_id("cus"),
        email=email,
        name=name,
        created=_now() if created is None else created,
        discount=None,
    )
    return obj


def _price_object(price_id: str, product_id: str, created: int) -> Obj:
    return price(price_id, product=product_id, created=created)


def _plan_object(price_id: str, product_id: str, created: int) -> Obj:
    # The pre-2025 `plan` on an item: the price seen through the older Plans API.
    plan = _template("plan")
    plan.update(
        id=price_id,
        product=product_id,
        created=created,
        amount=999,
        amount_decimal="999",
        billing_scheme="per_unit",
        currency="usd",
        interval_count=1,
        livemode=False,
        metadata={},
        tiers_mode=None,
        transform_usage=None,
    )
    return plan


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
    obj = _template("subscription")
    sub_id = id or new_id("sub")
    ts = _now() if created is None else created
    start = ts if period_start is None else period_start
    end = start + 30 * 86400 if period_end is None else period_end
    template_item = obj["items"]["data"][0]
    data = []
    for n, (price_id, product_id) in enumerate(items):
        item = _copy(template_item)
        item.update(
            id=item_ids[n] if item_ids is not None else new_id("si"),
            created=ts,
            subscription=sub_id,
            billing_thresholds=None,
        )
        if legacy:
            del item["price"], item["current_period_start"], item["current_period_end"]
            item["plan"] = _plan_object(price_id, product_id, ts)
        else:
            del item["plan"]
            item.update(
                price=_price_object(price_id, product_id, ts),
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


def checkout_session(
    id: str | None = None,
    *,
    customer: str,
    movie_id: str | None = None,
    payment_status: str = "paid",
    mode: str = "payment",
    payment_intent: str | None = None,
    amount_total: int = 399,
    created: int | None = None,
    status: str | None = None,
) -> Obj:
    obj = _template("checkout.session")
    cs_id = id or new_id("cs_test")
    ts = _now() if created is None else created
    obj.update(
        id=cs_id,
        customer=customer,
        metadata={"movie_id": movie_id} if movie_id is not None else {},
        payment_status=payment_status,
        mode=mode,
        payment_intent=payment_intent if mode == "payment" else None,
        amount_total=amount_total,
        amount_subtotal=amount_total,
        currency="usd",
        created=ts,
        expires_at=ts + 86400,
        status=status or ("complete" if payment_status != "unpaid" else "open"),
        url=None,
        shipping_cost=None,
        currency_conversion=None,
    )
    return obj


def payment_intent(
    id: str | None = None,
    *,
    customer: str,
    movie_id: str | None = None,
    status: str = "succeeded",
    amount: int = 399,
    created: int | None = None,
    latest_charge: str | None = None,
) -> Obj:
    obj = _template("payment_intent")
    pi_id = id or new_id("pi")
    obj.update(
        id=pi_id,
        customer=customer,
        metadata={"movie_id": movie_id} if movie_id is not None else {},
        status=status,
        amount=amount,
        amount_received=amount if status == "succeeded" else 0,
        created=_now() if created is None else created,
        canceled_at=None,
        client_secret=f"{pi_id}_secret_{secrets.token_hex(8)}",
        last_payment_error=None,
        next_action=None,
        processing=None,
        latest_charge=latest_charge,
        transfer_data=None,
    )
    return obj


def invoice(
    id: str | None = None,
    *,
    customer: str,
    lines: Sequence[tuple[str, str]],
    status: str = "paid",
    subscription: str | None = None,
    payment_intent: str | None = None,
    amount_paid: int | None = None,
    legacy: bool = False,
    created: int | None = None,
) -> Obj:
    """An invoice with one line per `(price_id, product_id)`.

    Current shape: `line.pricing.price_details.{price, product}`,
    `parent.subscription_details.subscription`, the payment intent under `payments`.
    `legacy=True`: `line.price` / `line.plan`, `invoice.subscription`, `invoice.payment_intent`.
    """
    obj = _template("invoice")
    in_id = id or new_id("in")
    ts = _now() if created is None else created
    template_line = obj["lines"]["data"][0]
    data = []
    total = 0
    for price_id, product_id in lines:
        line = _copy(template_line)
        line.update(id=new_id("il"), invoice=in_id, amount=999, subtotal=999)
        line["period"] = {"start": ts, "end": ts}
        if legacy:
            del line["pricing"], line["parent"]
            line.update(
                price=_price_object(price_id, product_id, ts),
                plan=_plan_object(price_id, product_id, ts) if subscription else None,
                subscription=subscription,
                type="subscription" if subscription else "invoiceitem",
            )
        else:
            line["pricing"] = {
                "type": "price_details",
                "price_details": {"price": price_id, "product": product_id},
                "unit_amount_decimal": "999",
            }
            line["parent"] = (
                {
                    "type": "subscription_item_details",
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": subscription,
                        "subscription_item": new_id("si"),
                    },
                }
                if subscription
                else {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": new_id("ii"),
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": None,
                    },
                }
            )
        data.append(line)
        total += 999
    obj["lines"].update(data=data, url=f"/v1/invoices/{in_id}/lines")
    paid = amount_paid if amount_paid is not None else (total if status == "paid" else 0)
    obj.update(
        id=in_id,
        customer=customer,
        status=status,
        created=ts,
        amount_due=total,
        amount_paid=paid,
        amount_remaining=total - paid,
        subtotal=total,
        total=total,
        billing_reason="subscription_cycle" if subscription else "manual",
        last_finalization_error=None,
        from_invoice=None,
        shipping_cost=None,
        amount_overpaid=0,
    )
    if legacy:
        del obj["parent"]
        obj.update(subscription=subscription, payment_intent=payment_intent)
    else:
        obj["parent"] = (
            {
                "type": "subscription_details",
                "subscription_details": {"metadata": {}, "subscription": subscription},
                "quote_details": None,
            }
            if subscription
            else None
        )
        obj.pop("subscription", None)
        if payment_intent is not None:
            obj["payments"] = {
                "object": "list",
                "data": [
                    {
                        "object": "invoice_payment",
                        "id": new_id("inpay"),
                        "invoice": in_id,
                        "is_default": True,
                        "status": "paid" if status == "paid" else "open",
                        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
                    }
                ],
                "has_more": False,
                "url": f"/v1/invoice_payments?invoice={in_id}",
            }
    return obj


def charge(
    id: str | None = None,
    *,
    customer: str,
    payment_intent: str,
    amount: int = 399,
    amount_refunded: int = 0,
    refunded: bool = False,
    created: int | None = None,
) -> Obj:
    obj = _template("charge")
    ch_id = id or new_id("ch")
    obj.update(
        id=ch_id,
        customer=customer,
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        captured=True,
        amount_refunded=amount_refunded,
        refunded=refunded,
        created=_now() if created is None else created,
        source=None,
        transfer_data=None,
        receipt_url=None,
    )
    obj["refunds"]["url"] = f"/v1/charges/{ch_id}/refunds"
    return obj


def refund(
    id: str | None = None,
    *,
    charge: str,
    payment_intent: str,
    amount: int,
    status: str = "succeeded",
    created: int | None = None,
    customer: str | None = None,
) -> Obj:
    """A refund; Stripe leaves `customer` null on most refunds, so it is optional here too."""
    obj = _template("refund")
    obj.update(
        id=id or new_id("re"),
        charge=charge,
        payment_intent=payment_intent,
        amount=amount,
        status=status,
        created=_now() if created is None else created,
        customer=customer,
    )
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
    evt = _template("event")
    data: Obj = {"object": _copy(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    evt.update(
        id=id or new_id("evt"),
        type=type,
        created=_now() if created is None else created,
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
    t = _now() if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    mac = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
