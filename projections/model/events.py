"""Parse a log message into a `StripeEvent`: the envelope plus a small typed view of the object.

Rules never handle raw dicts: `parse` normalises the object to the current API shape
(`projections.model.normalise`) and keeps only the fields some rule reads. It runs on every event
of a replay, so it extracts, it does not validate beyond what the fold needs.

Views are tolerant: every field has a defined default, taken when the field is absent or of
the wrong type (a view is built from its fields' declared types, `projections.model._fields`).
`parse` refuses only what is not a Stripe event envelope at all; an event that describes no
stored state (no `data.object`, an object without an id such as the `invoice.upcoming`
preview, a thin event notification) parses with `obj=None`, and the fold ignores it and
counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from entitled import bodies
from projections.errors import EventParseError
from projections.model._fields import Obj, as_dict, as_int, as_list, build, ref
from projections.model.normalise import normalise
from projections.model.views import (
    ChargeView,
    CheckoutSessionView,
    CustomerView,
    DisputeView,
    EntitlementSummaryView,
    InvoicePaymentView,
    InvoiceView,
    ItemView,
    LineView,
    ObjectView,
    PaymentIntentView,
    PriceView,
    ProductFeaturesView,
    ProductView,
    RefundView,
    SubscriptionView,
)

__all__ = ["StripeEvent", "parse", "view_of"]

V = TypeVar("V")


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


# Our snapshot of a product's features (Stripe has no such object: `ingest.snapshots` logs it)
PRODUCT_FEATURES = "product_features"
SUMMARY = "entitlements.active_entitlement_summary"

# -- views ------------------------------------------------------------------------------------


def _item(i: Obj) -> ItemView:
    price = i.get("price")
    product = ref(price.get("product")) if isinstance(price, dict) else None
    quantity = as_int(i.get("quantity"))
    return build(
        ItemView,
        i,
        price=ref(price),
        product=product,
        quantity=1 if quantity is None else quantity,
    )


def _subscription(o: Obj) -> SubscriptionView:
    return build(SubscriptionView, o, items=tuple(_item(i) for i in as_list(o.get("items"))))


def _checkout_session(o: Obj) -> CheckoutSessionView:
    products = {ref(as_dict(li.get("price")).get("product")) for li in as_list(o.get("line_items"))}
    return build(CheckoutSessionView, o, product_ids=tuple(sorted(p for p in products if p)))


def _line(ln: Obj) -> LineView:
    details = as_dict(as_dict(ln.get("pricing")).get("price_details"))
    return LineView(ref(details.get("price")), ref(details.get("product")))


def _invoice(o: Obj) -> InvoiceView:
    details = as_dict(as_dict(o.get("parent")).get("subscription_details"))
    pi = None
    for payment in as_list(o.get("payments")):
        pi = ref(as_dict(payment.get("payment")).get("payment_intent")) or pi
        if payment.get("is_default") is True:
            break
    return build(
        InvoiceView,
        o,
        subscription=ref(details.get("subscription")),
        payment_intent=pi,
        lines=tuple(_line(ln) for ln in as_list(o.get("lines"))),
    )


def _invoice_payment(o: Obj) -> InvoicePaymentView:
    payment = as_dict(o.get("payment"))
    return build(InvoicePaymentView, o, payment_intent=ref(payment.get("payment_intent")))


def _keys(values: list[Obj]) -> tuple[str, ...]:
    return tuple(sorted({k for v in values if isinstance(k := v.get("lookup_key"), str) and k}))


def _product_features(o: Obj) -> ProductFeaturesView:
    # an archived feature (active: false) grants nothing, even while still attached
    features = [as_dict(pf.get("entitlement_feature")) for pf in as_list(o)]
    return build(
        ProductFeaturesView, o, lookup_keys=_keys([f for f in features if f.get("active", True)])
    )


def _summary(o: Obj) -> EntitlementSummaryView:
    listed = as_dict(o.get("entitlements"))
    return build(
        EntitlementSummaryView,
        o,
        lookup_keys=_keys(as_list(listed)),
        has_more=listed.get("has_more") is True,
    )


def _plain(cls: Callable[..., V]) -> Callable[[Obj], V]:
    return lambda o: build(cls, o)


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
    PRODUCT_FEATURES: _product_features,
    SUMMARY: _summary,
}
# Objects that have no id of their own, and the field that identifies them.
_IDENTITY = {SUMMARY: "customer"}
# Only these shapes changed between API versions; skip the normaliser for the rest.
_NORMALISED = frozenset({"subscription", "invoice"})


def view_of(obj: Obj, api_version: str | None) -> ObjectView | None:
    """The typed view of a `data.object` of any API version; None for types no rule reads
    and for objects without an id (previews such as the upcoming invoice)."""
    kind = obj.get("object")
    make = _VIEWS.get(kind) if isinstance(kind, str) else None
    ident = obj.get("id")
    if make is None or not isinstance(ident, str) or not ident:
        return None
    if kind in _NORMALISED:
        obj = normalise(obj, api_version)
    return make(obj)


# -- the envelope -------------------------------------------------------------------------------


def _epoch(value: Any) -> int:
    """Seconds since the epoch from an integer or an ISO-8601 string (thin events); 0 when
    neither (an event with no usable time sorts before every other snapshot)."""
    seconds = bodies.epoch_seconds(value)
    return 0 if seconds is None else int(seconds)


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
        # tolerant: ingest logs every signed body as received (entitled.bodies)
        doc = bodies.loads(raw)
    except bodies.UnreadableBody as exc:
        raise EventParseError(f"{exc} at partition {partition} offset {offset}") from exc
    if not isinstance(doc, dict):
        raise EventParseError(f"not a JSON object at {partition}/{offset}")
    event_id, event_type, kind = doc.get("id"), doc.get("type"), doc.get("object", "event")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise EventParseError(f"no event id and type at {partition}/{offset}")
    if kind not in ("event", "v2.core.event"):
        raise EventParseError(f"not an event at {partition}/{offset}: object={kind!r}")
    api_version = _text(doc.get("api_version"))
    data = as_dict(doc.get("data"))
    # A thin event (v2.core.event) has no data: it names a related object that the hydrator
    # fetches and logs as a snapshot of its own. Here it is a counted no-op.
    obj = data.get("object")
    obj = obj if isinstance(obj, dict) and kind == "event" else {}
    who = _IDENTITY.get(_text(obj.get("object")) or "")
    if who is not None and "id" not in obj:
        obj = {**obj, "id": ref(obj.get(who))}
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
        customer=object_id if object_type == "customer" else ref(obj.get("customer")),
        obj=view,
        previous=previous,
    )
