"""Parse a log message into a `StripeEvent`: the envelope plus a small typed view of the object.

Rules never handle raw dicts: `parse` normalises the object to the current API shape
(`projections.normalise`) and keeps only the fields some rule reads. It runs on every event
of a replay, so it extracts, it does not validate beyond what the fold needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from projections.errors import EventParseError
from projections.normalise import normalise

__all__ = [
    "ChargeView",
    "CheckoutSessionView",
    "CustomerView",
    "InvoiceView",
    "ItemView",
    "LineView",
    "Metadata",
    "ObjectView",
    "PaymentIntentView",
    "PriceView",
    "ProductView",
    "RefundView",
    "StripeEvent",
    "SubscriptionView",
    "parse",
    "view_of",
]

Obj = dict[str, Any]
Metadata = tuple[tuple[str, str], ...]  # sorted (key, value) pairs


@dataclass(frozen=True, slots=True)
class ProductView:
    id: str
    name: str | None
    active: bool
    deleted: bool
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class PriceView:
    id: str
    product: str | None
    active: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class CustomerView:
    id: str
    email: str | None
    name: str | None
    deleted: bool


@dataclass(frozen=True, slots=True)
class ItemView:
    id: str
    price: str | None
    product: str | None
    current_period_start: int | None
    current_period_end: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: str
    customer: str | None
    status: str
    cancel_at_period_end: bool
    items: tuple[ItemView, ...]


@dataclass(frozen=True, slots=True)
class CheckoutSessionView:
    id: str
    customer: str | None
    mode: str | None
    status: str | None
    payment_status: str | None
    payment_intent: str | None
    amount_total: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class PaymentIntentView:
    id: str
    customer: str | None
    status: str | None
    amount: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class LineView:
    price: str | None
    product: str | None


@dataclass(frozen=True, slots=True)
class InvoiceView:
    id: str
    customer: str | None
    status: str | None
    subscription: str | None
    payment_intent: str | None
    amount_paid: int
    lines: tuple[LineView, ...]
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class ChargeView:
    id: str
    customer: str | None
    payment_intent: str | None
    amount: int
    amount_refunded: int
    refunded: bool


@dataclass(frozen=True, slots=True)
class RefundView:
    id: str
    charge: str | None
    payment_intent: str | None
    amount: int
    status: str | None
    customer: str | None


ObjectView = (
    ProductView
    | PriceView
    | CustomerView
    | SubscriptionView
    | CheckoutSessionView
    | PaymentIntentView
    | InvoiceView
    | ChargeView
    | RefundView
)


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """One event of the log, as the fold sees it."""

    id: str
    type: str
    created: int
    api_version: str | None
    account: str | None
    partition: int
    offset: int
    key: str | None
    object_type: str | None
    object_id: str | None
    customer: str | None
    obj: ObjectView | None


def _ref(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _meta(obj: Obj) -> Metadata:
    meta = obj.get("metadata")
    if not meta:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in meta.items() if v is not None))


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _product(o: Obj) -> ProductView:
    return ProductView(
        o["id"], o.get("name"), bool(o.get("active", True)), bool(o.get("deleted")), _meta(o)
    )


def _price(o: Obj) -> PriceView:
    return PriceView(
        o["id"], _ref(o.get("product")), bool(o.get("active", True)), bool(o.get("deleted"))
    )


def _customer(o: Obj) -> CustomerView:
    return CustomerView(o["id"], o.get("email"), o.get("name"), bool(o.get("deleted")))


def _item(i: Obj) -> ItemView:
    price = i.get("price")
    if isinstance(price, dict):
        price_id, product = price.get("id"), _ref(price.get("product"))
    else:
        price_id, product = _ref(price), None
    return ItemView(
        i["id"], price_id, product, i.get("current_period_start"), i.get("current_period_end")
    )


def _subscription(o: Obj) -> SubscriptionView:
    items = o.get("items") or {}
    return SubscriptionView(
        o["id"],
        _ref(o.get("customer")),
        o.get("status") or "",
        bool(o.get("cancel_at_period_end")),
        tuple(_item(i) for i in items.get("data") or ()),
    )


def _checkout_session(o: Obj) -> CheckoutSessionView:
    return CheckoutSessionView(
        o["id"],
        _ref(o.get("customer")),
        o.get("mode"),
        o.get("status"),
        o.get("payment_status"),
        _ref(o.get("payment_intent")),
        _int(o.get("amount_total")),
        _meta(o),
    )


def _payment_intent(o: Obj) -> PaymentIntentView:
    return PaymentIntentView(
        o["id"], _ref(o.get("customer")), o.get("status"), _int(o.get("amount")), _meta(o)
    )


def _line(ln: Obj) -> LineView:
    details = (ln.get("pricing") or {}).get("price_details") or {}
    return LineView(_ref(details.get("price")), _ref(details.get("product")))


def _invoice(o: Obj) -> InvoiceView:
    parent = o.get("parent") or {}
    sub = _ref((parent.get("subscription_details") or {}).get("subscription"))
    pi = None
    for payment in (o.get("payments") or {}).get("data") or ():
        pi = _ref((payment.get("payment") or {}).get("payment_intent")) or pi
        if payment.get("is_default"):
            break
    return InvoiceView(
        o["id"],
        _ref(o.get("customer")),
        o.get("status"),
        sub,
        pi,
        _int(o.get("amount_paid")),
        tuple(_line(ln) for ln in (o.get("lines") or {}).get("data") or ()),
        _meta(o),
    )


def _charge(o: Obj) -> ChargeView:
    return ChargeView(
        o["id"],
        _ref(o.get("customer")),
        _ref(o.get("payment_intent")),
        _int(o.get("amount")),
        _int(o.get("amount_refunded")),
        bool(o.get("refunded")),
    )


def _refund(o: Obj) -> RefundView:
    return RefundView(
        o["id"],
        _ref(o.get("charge")),
        _ref(o.get("payment_intent")),
        _int(o.get("amount")),
        o.get("status"),
        _ref(o.get("customer")),
    )


# data.object.object -> view builder; object types no rule reads have no view.
_VIEWS: dict[str, Callable[[Obj], ObjectView]] = {
    "product": _product,
    "price": _price,
    "customer": _customer,
    "subscription": _subscription,
    "checkout.session": _checkout_session,
    "payment_intent": _payment_intent,
    "invoice": _invoice,
    "charge": _charge,
    "refund": _refund,
}
# Only these shapes changed between API versions; skip the normaliser for the rest.
_NORMALISED = frozenset({"subscription", "invoice"})


def view_of(obj: Obj, api_version: str | None) -> ObjectView | None:
    """The typed view of a `data.object` of any API version, or None for unread types."""
    build = _VIEWS.get(obj.get("object"))  # type: ignore[arg-type]
    if build is None:
        return None
    if obj["object"] in _NORMALISED:
        obj = normalise(obj, api_version)
    return build(obj)


def parse(raw: bytes, *, partition: int, offset: int, key: str | None = None) -> StripeEvent:
    """Parse one message value; raises `EventParseError` if it is not a Stripe event."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventParseError(f"not JSON at partition {partition} offset {offset}") from exc
    try:
        if doc.get("object", "event") != "event":
            raise EventParseError(f"not an event: object={doc.get('object')!r}")
        event_id, event_type, created = doc["id"], doc["type"], doc["created"]
        obj = doc["data"]["object"]
        if not (
            isinstance(event_id, str)
            and isinstance(event_type, str)
            and isinstance(created, int)
            and isinstance(obj, dict)
        ):
            raise EventParseError(f"malformed event envelope at {partition}/{offset}")
        object_type = obj.get("object")
        object_id = obj.get("id")
        api_version = doc.get("api_version")
        view = view_of(obj, api_version)
    except EventParseError:
        raise
    except (AttributeError, KeyError, TypeError) as exc:
        raise EventParseError(f"not a Stripe event at {partition}/{offset}: {exc!r}") from exc
    customer = object_id if object_type == "customer" else _ref(obj.get("customer"))
    return StripeEvent(
        id=event_id,
        type=event_type,
        created=created,
        api_version=api_version,
        account=doc.get("account"),
        partition=partition,
        offset=offset,
        key=key,
        object_type=object_type,
        object_id=object_id if isinstance(object_id, str) else None,
        customer=customer,
        obj=view,
    )
