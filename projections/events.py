"""Parse a log message into a `StripeEvent`: the envelope plus a small typed view of the object.

Rules never handle raw dicts: `parse` normalises the object to the current API shape
(`projections.normalise`) and keeps only the fields some rule reads. It runs on every event
of a replay, so it extracts, it does not validate beyond what the fold needs.

Views are tolerant: every field has a defined default, taken when the field is absent or of
the wrong type (a view is built from the field's declared type, `_build`). `parse` refuses
only what is not a Stripe event envelope at all; an event that describes no stored state (no
`data.object`, an object without an id such as the `invoice.upcoming` preview, a thin event
notification) parses with `obj=None`, and the fold ignores it and counts it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from projections.errors import EventParseError
from projections.metadata import Metadata, metadata_of
from projections.normalise import normalise
from projections.rows import ItemRow

__all__ = [
    "ChargeView",
    "CheckoutSessionView",
    "CustomerView",
    "DisputeView",
    "InvoicePaymentView",
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
    "stage_of",
    "view_of",
]

Obj = dict[str, Any]
V = TypeVar("V")

# A subscription item reads exactly what the row stores: one class for both.
ItemView = ItemRow


@dataclass(frozen=True, slots=True)
class ProductView:
    id: str
    name: str | None = None
    active: bool = True
    deleted: bool = False
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class PriceView:
    id: str
    product: str | None = None
    active: bool = True
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class CustomerView:
    id: str
    email: str | None = None
    name: str | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: str
    customer: str | None = None
    status: str = ""
    cancel_at_period_end: bool = False
    items: tuple[ItemView, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckoutSessionView:
    id: str
    customer: str | None = None
    mode: str | None = None
    status: str | None = None
    payment_status: str | None = None
    payment_intent: str | None = None
    amount_total: int = 0
    metadata: Metadata = ()
    # from `line_items` (present when expanded: hydrated snapshots carry it), sorted
    product_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PaymentIntentView:
    id: str
    customer: str | None = None
    status: str | None = None
    amount: int = 0
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class LineView:
    price: str | None = None
    product: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceView:
    id: str
    customer: str | None = None
    status: str | None = None
    subscription: str | None = None
    payment_intent: str | None = None
    amount_paid: int = 0
    lines: tuple[LineView, ...] = ()
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class ChargeView:
    id: str
    customer: str | None = None
    payment_intent: str | None = None
    amount: int = 0
    amount_refunded: int = 0
    refunded: bool = False
    captured: bool = False
    status: str | None = None


@dataclass(frozen=True, slots=True)
class RefundView:
    id: str
    charge: str | None = None
    payment_intent: str | None = None
    amount: int = 0
    status: str | None = None
    customer: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeView:
    id: str
    charge: str | None = None
    payment_intent: str | None = None
    status: str | None = None
    amount: int = 0


@dataclass(frozen=True, slots=True)
class InvoicePaymentView:
    id: str
    invoice: str | None = None
    payment_intent: str | None = None
    status: str | None = None
    customer: str | None = None


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
    | DisputeView
    | InvoicePaymentView
)


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """One event of the log, as the fold sees it.

    `obj` is None when the event describes no stored state the fold reads; `previous` is the
    view of the object as it was before this event (`data.previous_attributes` laid over the
    snapshot), when the event says.
    """

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
    previous: ObjectView | None = None


# -- tolerant field readers -----------------------------------------------------------------


def _ref(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Obj]:
    """The dicts of a Stripe list object (`{"data": [...]}`) or of a plain list."""
    if isinstance(value, dict):
        value = value.get("data")
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _reader(tp: Any, default: Any) -> Callable[[Any], Any]:
    """How to read a field of type `tp` from a payload value, `default` when unusable."""
    if tp == Metadata:
        return metadata_of
    if tp is bool:
        return lambda v: v if isinstance(v, bool) else default
    if tp is int:
        return lambda v: v if isinstance(v, int) and not isinstance(v, bool) else default
    if tp is str:
        return lambda v: v if isinstance(v, str) else default
    if tp == str | None:
        return _ref
    if tp == int | None:
        return _int
    raise TypeError(f"no reader for {tp}: build the field explicitly")


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Callable[[Any], Any] | None]] = []
    for f in dataclasses.fields(cls):
        default = None if f.default is dataclasses.MISSING else f.default
        try:
            out.append((f.name, _reader(hints[f.name], default)))
        except TypeError:
            out.append((f.name, None))  # a nested field: the builder passes it
    return tuple(out)


def _build(cls: Callable[..., V], o: Obj, **given: Any) -> V:
    """`cls` from payload `o`: each field read by its declared type, `given` ones as given."""
    values = dict(given)
    for name, read in _readers(cls):
        if name not in values and read is not None:
            values[name] = read(o.get(name))
    return cls(**values)


# -- views ------------------------------------------------------------------------------------


def _item(i: Obj) -> ItemView:
    price = i.get("price")
    product = _ref(price.get("product")) if isinstance(price, dict) else None
    quantity = _int(i.get("quantity"))
    return _build(
        ItemView,
        i,
        price=_ref(price),
        product=product,
        quantity=1 if quantity is None else quantity,
    )


def _subscription(o: Obj) -> SubscriptionView:
    return _build(SubscriptionView, o, items=tuple(_item(i) for i in _list(o.get("items"))))


def _checkout_session(o: Obj) -> CheckoutSessionView:
    products = {_ref(_dict(li.get("price")).get("product")) for li in _list(o.get("line_items"))}
    return _build(CheckoutSessionView, o, product_ids=tuple(sorted(p for p in products if p)))


def _line(ln: Obj) -> LineView:
    details = _dict(_dict(ln.get("pricing")).get("price_details"))
    return LineView(_ref(details.get("price")), _ref(details.get("product")))


def _invoice(o: Obj) -> InvoiceView:
    details = _dict(_dict(o.get("parent")).get("subscription_details"))
    pi = None
    for payment in _list(o.get("payments")):
        pi = _ref(_dict(payment.get("payment")).get("payment_intent")) or pi
        if payment.get("is_default") is True:
            break
    return _build(
        InvoiceView,
        o,
        subscription=_ref(details.get("subscription")),
        payment_intent=pi,
        lines=tuple(_line(ln) for ln in _list(o.get("lines"))),
    )


def _invoice_payment(o: Obj) -> InvoicePaymentView:
    payment = _dict(o.get("payment"))
    return _build(InvoicePaymentView, o, payment_intent=_ref(payment.get("payment_intent")))


def _plain(cls: Callable[..., V]) -> Callable[[Obj], V]:
    return lambda o: _build(cls, o)


# data.object.object -> view builder; object types no rule reads have no view.
_VIEWS: dict[str, Callable[[Obj], ObjectView]] = {
    "product": _plain(ProductView),
    "price": _plain(PriceView),
    "customer": _plain(CustomerView),
    "subscription": _subscription,
    "checkout.session": _checkout_session,
    "payment_intent": _plain(PaymentIntentView),
    "invoice": _invoice,
    "charge": _plain(ChargeView),
    "refund": _plain(RefundView),
    "dispute": _plain(DisputeView),
    "invoice_payment": _invoice_payment,
}
# Only these shapes changed between API versions; skip the normaliser for the rest.
_NORMALISED = frozenset({"subscription", "invoice"})


def view_of(obj: Obj, api_version: str | None) -> ObjectView | None:
    """The typed view of a `data.object` of any API version; None for types no rule reads
    and for objects without an id (previews such as the upcoming invoice)."""
    kind = obj.get("object")
    build = _VIEWS.get(kind) if isinstance(kind, str) else None
    ident = obj.get("id")
    if build is None or not isinstance(ident, str) or not ident:
        return None
    if kind in _NORMALISED:
        obj = normalise(obj, api_version)
    return build(obj)


# -- lifecycle stages ---------------------------------------------------------------------------

_INVOICE = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
_PAYMENT_INTENT = {"processing": 1, "requires_capture": 2, "succeeded": 3, "canceled": 3}
_SESSION = {"open": 0, "complete": 1, "expired": 1}
_REFUND = {"succeeded": 1, "failed": 1, "canceled": 1}
_DISPUTE = {
    "warning_needs_response": 0,
    "needs_response": 0,
    "warning_under_review": 1,
    "under_review": 1,
    "won": 2,
    "lost": 2,
    "warning_closed": 2,
    "prevented": 2,
}
_INVOICE_PAYMENT = {"open": 0, "paid": 1, "canceled": 1}


def stage_of(obj: ObjectView | None) -> int:
    """Where the object is in its lifecycle, a number that never goes down as the object
    lives: an invoice draft < open < uncollectible < paid | void; a payment intent
    requires_* < processing < requires_capture < succeeded | canceled; a checkout session
    open < complete | expired, then unpaid < paid; a refund pending (or requires_action) <
    succeeded | failed | canceled; a dispute needs_response < under_review < closed; an
    invoice payment open < paid | canceled; a charge by its refunded amount, then captured,
    refunded, then pending < final. 0 for objects without a monotonic lifecycle."""
    if isinstance(obj, InvoiceView):
        return _INVOICE.get(obj.status or "", 0)
    if isinstance(obj, PaymentIntentView):
        return _PAYMENT_INTENT.get(obj.status or "", 0)  # requires_*: 0
    if isinstance(obj, CheckoutSessionView):
        paid = obj.payment_status in ("paid", "no_payment_required")
        return _SESSION.get(obj.status or "", 0) * 2 + paid
    if isinstance(obj, RefundView):
        return _REFUND.get(obj.status or "", 0)
    if isinstance(obj, DisputeView):
        return _DISPUTE.get(obj.status or "", 0)
    if isinstance(obj, InvoicePaymentView):
        return _INVOICE_PAYMENT.get(obj.status or "", 0)
    if isinstance(obj, ChargeView):
        refunded = max(obj.amount_refunded, 0)
        final = obj.status not in (None, "pending")
        return ((refunded * 2 + obj.captured) * 2 + obj.refunded) * 2 + final
    return 0


# -- the envelope -------------------------------------------------------------------------------


def _epoch(value: Any) -> int:
    """Seconds since the epoch from an integer or an ISO-8601 string (thin events); 0 when
    neither (an event with no usable time sorts before every other snapshot)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return int(value) if value.isdigit() else 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    return 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _overlay(obj: Obj, previous: Mapping[str, Any]) -> Obj:
    """The object as it was before the event: `previous_attributes` laid over the snapshot
    (one level deep for maps: Stripe lists only the metadata keys that changed)."""
    out = dict(obj)
    for k, v in previous.items():
        old = out.get(k)
        out[k] = {**old, **v} if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def parse(raw: bytes, *, partition: int, offset: int, key: str | None = None) -> StripeEvent:
    """Parse one message value; raises `EventParseError` only if it is not a Stripe event
    envelope (not JSON, not an object, no string id and type, another `object` kind)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventParseError(f"not JSON at partition {partition} offset {offset}") from exc
    if not isinstance(doc, dict):
        raise EventParseError(f"not a JSON object at {partition}/{offset}")
    event_id, event_type, kind = doc.get("id"), doc.get("type"), doc.get("object", "event")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise EventParseError(f"no event id and type at {partition}/{offset}")
    if kind not in ("event", "v2.core.event"):
        raise EventParseError(f"not an event at {partition}/{offset}: object={kind!r}")
    api_version = _text(doc.get("api_version"))
    data = _dict(doc.get("data"))
    # A thin event (v2.core.event) has no data: it names a related object that the hydrator
    # fetches and logs as a snapshot of its own. Here it is a counted no-op.
    obj = data.get("object")
    obj = obj if isinstance(obj, dict) and kind == "event" else {}
    object_type, object_id = _text(obj.get("object")), _text(obj.get("id")) or None
    view = view_of(obj, api_version) if object_id else None
    previous = None
    prior = data.get("previous_attributes")
    if view is not None and isinstance(prior, dict) and prior:
        previous = view_of(_overlay(obj, prior), api_version)
    return StripeEvent(
        id=event_id,
        type=event_type,
        created=_epoch(doc.get("created")),
        api_version=api_version,
        account=_text(doc.get("account")),
        partition=partition,
        offset=offset,
        key=key,
        object_type=object_type,
        object_id=object_id,
        customer=object_id if object_type == "customer" else _ref(obj.get("customer")),
        obj=view,
        previous=previous,
    )
