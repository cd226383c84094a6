"""parse(): the envelope, the typed views for both API shapes, and what is not an event."""

from __future__ import annotations

import orjson
import pytest

from launcher.stripe import events as se
from projections.errors import EventParseError
from projections.model.events import parse
from projections.model.views import (
    ChargeView,
    CheckoutSessionView,
    CustomerView,
    DisputeView,
    InvoicePaymentView,
    InvoiceView,
    ItemView,
    LineView,
    PaymentIntentView,
    PriceView,
    ProductView,
    RefundView,
    SubscriptionView,
)


def test_envelope() -> None:
    raw = se.encode(
        se.event("customer.created", se.customer("cus_1"), id="evt_1", created=7, account="acct")
    )
    e = parse(raw, partition=3, offset=42, key="cus_1")
    assert (e.id, e.type, e.created, e.api_version) == (
        "evt_1",
        "customer.created",
        7,
        se.CURRENT_API_VERSION,
    )
    assert (e.partition, e.offset, e.key, e.account) == (3, 42, "cus_1", "acct")
    assert (e.object_type, e.object_id, e.customer) == ("customer", "cus_1", "cus_1")
    assert e.obj == CustomerView("cus_1", None, None, False)


@pytest.mark.parametrize("legacy", [False, True])
def test_subscription_view_both_shapes(legacy: bool) -> None:
    sub = se.subscription(
        "sub_1",
        customer="cus_1",
        items=[("price_a", "prod_a"), ("price_b", "prod_b")],
        item_ids=["si_a", "si_b"],
        legacy=legacy,
        period_start=10,
        period_end=20,
        status="trialing",
        cancel_at_period_end=True,
    )
    version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
    e = parse(
        se.encode(se.event("customer.subscription.updated", sub, api_version=version)),
        partition=0,
        offset=0,
    )
    assert e.customer == "cus_1" and e.object_id == "sub_1"
    assert e.obj == SubscriptionView(
        "sub_1",
        "cus_1",
        "trialing",
        True,
        (
            ItemView("si_a", "price_a", "prod_a", 10, 20),
            ItemView("si_b", "price_b", "prod_b", 10, 20),
        ),
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_invoice_view_both_shapes(legacy: bool) -> None:
    inv = se.invoice(
        "in_1",
        customer="cus_1",
        lines=[("price_a", "prod_a")],
        subscription="sub_1",
        payment_intent="pi_1",
        legacy=legacy,
    )
    e = parse(se.encode(se.event("invoice.paid", inv)), partition=0, offset=0)
    assert e.obj == InvoiceView(
        "in_1", "cus_1", "paid", "sub_1", "pi_1", 999, (LineView("price_a", "prod_a"),), ()
    )


def test_other_views() -> None:
    cases = [
        (
            se.product("prod_1", groups="action", name="Action"),
            ProductView("prod_1", "Action", True, False, (("subscription_group", "action"),)),
        ),
        (se.price("price_1", product="prod_1"), PriceView("price_1", "prod_1", True, False)),
        (
            se.checkout_session("cs_1", customer="cus_1", movie_id="7", payment_intent="pi_1"),
            CheckoutSessionView(
                "cs_1", "cus_1", "payment", "complete", "paid", "pi_1", 399, (("movie_id", "7"),)
            ),
        ),
        (
            se.payment_intent("pi_1", customer="cus_1", movie_id="7"),
            PaymentIntentView("pi_1", "cus_1", "succeeded", 399, (("movie_id", "7"),)),
        ),
        (
            se.charge("ch_1", customer="cus_1", payment_intent="pi_1"),
            ChargeView("ch_1", "cus_1", "pi_1", 399, 0, False, True, "succeeded"),
        ),
        (
            se.refund("re_1", charge="ch_1", payment_intent="pi_1", amount=5),
            RefundView("re_1", "ch_1", "pi_1", 5, "succeeded", None),
        ),
    ]
    for obj, expected in cases:
        e = parse(se.encode(se.event("x.updated", obj)), partition=0, offset=0)
        assert e.obj == expected


def test_deleted_object_and_unread_type() -> None:
    e = parse(
        se.encode(
            se.event("product.deleted", {"id": "prod_1", "object": "product", "deleted": True})
        ),
        partition=0,
        offset=0,
    )
    assert e.obj == ProductView("prod_1", None, True, True, ())
    e = parse(
        se.encode(se.event("coupon.created", {"id": "co_1", "object": "coupon"})),
        partition=0,
        offset=0,
    )
    assert e.obj is None and e.object_type == "coupon" and e.customer is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'"evt"',
        b"{}",
        b'{"object": "customer", "id": "cus_1"}',
        b'{"object": "customer", "id": "cus_1", "type": "customer.created"}',
        b'{"id": 7, "type": "x", "data": {}}',
        b'{"id": "evt_1", "type": null, "data": {}}',
    ],
)
def test_not_an_event(raw: bytes) -> None:
    with pytest.raises(EventParseError):
        parse(raw, partition=0, offset=0)


def test_expanded_references() -> None:
    obj = se.charge("ch_1", customer="cus_1", payment_intent="pi_1")
    obj["customer"] = {"id": "cus_1", "object": "customer"}
    e = parse(orjson.dumps(se.event("charge.updated", obj)), partition=0, offset=0)
    assert e.customer == "cus_1" and isinstance(e.obj, ChargeView) and e.obj.customer == "cus_1"


def _raw(obj: object, type: str = "x.updated", **envelope: object) -> bytes:
    doc = {"id": "evt_1", "object": "event", "type": type, "created": 5, "data": {"object": obj}}
    doc.update(envelope)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "evt_1", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "type": "x", "created": "1", "data": {"object": {}}}',
        b'{"id": "evt_1", "type": "x", "data": {"object": []}}',
        b'{"id": "evt_1", "type": "x", "created": 1, "data": "x"}',
        b'{"id": "evt_1", "type": "customer.created", "created": 1,'
        b' "data": {"object": {"object": "customer"}}}',
    ],
)
def test_events_without_stored_state_parse_with_no_object(raw: bytes) -> None:
    e = parse(raw, partition=0, offset=0)
    assert e.id == "evt_1" and e.obj is None and e.object_id is None and e.customer is None


def test_upcoming_invoice_preview_has_no_id_and_no_view() -> None:
    inv = se.invoice("in_1", customer="cus_1", lines=[("price_a", "prod_a")], status="draft")
    del inv["id"]
    e = parse(se.encode(se.event("invoice.upcoming", inv)), partition=0, offset=0)
    assert e.obj is None and e.object_id is None and e.object_type == "invoice"
    assert e.customer == "cus_1"  # still keyed and parked by customer, but stores nothing


def test_thin_event_notification() -> None:
    raw = orjson.dumps(
        {
            "id": "evt_test_65R9",
            "object": "v2.core.event",
            "type": "v1.customer.subscription.updated",
            "livemode": False,
            "created": "2024-09-17T06:20:52.246Z",
            "related_object": {
                "id": "sub_1",
                "type": "subscription",
                "url": "/v1/subscriptions/sub_1",
            },
        }
    )
    e = parse(raw, partition=1, offset=2)
    assert (e.id, e.type, e.created) == (
        "evt_test_65R9",
        "v1.customer.subscription.updated",
        1726554052,
    )
    assert e.obj is None and e.object_id is None


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (7, 7),
        (7.9, 7),
        ("7", 7),
        ("1970-01-01T00:00:09+00:00", 9),
        ("soon", 0),
        (None, 0),
        (True, 0),
    ],
)
def test_created_of_any_type(created: object, expected: int) -> None:
    e = parse(_raw(se.customer("cus_1"), created=created), partition=0, offset=0)
    assert e.created == expected


def test_wrong_types_take_the_defaults() -> None:
    sub = {
        "id": "sub_1",
        "object": "subscription",
        "customer": 7,
        "status": 3,
        "cancel_at_period_end": "yes",
        "items": "many",
    }
    e = parse(_raw(sub), partition=0, offset=0)
    assert e.obj == SubscriptionView("sub_1", None, "", False, ())
    product = {"id": "prod_1", "object": "product", "metadata": ["a"], "active": None, "name": 1}
    assert parse(_raw(product), partition=0, offset=0).obj == ProductView("prod_1")
    inv = {"id": "in_1", "object": "invoice", "lines": {"object": "list"}, "payments": [1]}
    assert parse(_raw(inv), partition=0, offset=0).obj == InvoiceView("in_1")
    items = {"data": ["x", {"price": 5, "quantity": "2"}, {"id": "si_1", "quantity": 0}]}
    sub = {"id": "sub_1", "object": "subscription", "items": items}
    view = parse(_raw(sub), partition=0, offset=0).obj
    assert isinstance(view, SubscriptionView)
    assert view.items == (ItemView("", None, None, None, None, 1), ItemView("si_1", quantity=0))
    meta = {"id": "pi_1", "object": "payment_intent", "metadata": {"a": 1, "b": None, "c": {}}}
    assert parse(_raw(meta), partition=0, offset=0).obj == PaymentIntentView(
        "pi_1", metadata=(("a", "1"),)
    )


def test_dispute_invoice_payment_and_checkout_line_items() -> None:
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "charge": "ch_1",
        "payment_intent": {"id": "pi_1"},
        "status": "lost",
        "amount": 399,
    }
    e = parse(_raw(dispute, "charge.dispute.closed"), partition=0, offset=0)
    assert e.obj == DisputeView("dp_1", "ch_1", "pi_1", "lost", 399)
    payment = {
        "id": "inpay_1",
        "object": "invoice_payment",
        "invoice": "in_1",
        "status": "paid",
        "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
    }
    e = parse(_raw(payment, "invoice_payment.paid"), partition=0, offset=0)
    assert e.obj == InvoicePaymentView("inpay_1", "in_1", "pi_1", "paid", None)
    cs = se.checkout_session("cs_1", customer="cus_1")
    cs["line_items"] = {
        "data": [
            {"price": {"id": "price_a", "product": "prod_b"}},
            {"price": {"id": "price_b", "product": {"id": "prod_a", "object": "product"}}},
            {"price": "price_c"},
        ]
    }
    view = parse(_raw(cs), partition=0, offset=0).obj
    assert isinstance(view, CheckoutSessionView) and view.product_ids == ("prod_a", "prod_b")


def test_previous_attributes_give_the_prior_view() -> None:
    sub = se.subscription("sub_1", customer="cus_1", items=[("p", "prod")], status="active")
    sub["metadata"] = {"k": "new"}
    raw = se.encode(
        se.event(
            "customer.subscription.updated",
            sub,
            previous_attributes={"status": "trialing", "metadata": {"k": None}},
        )
    )
    e = parse(raw, partition=0, offset=0)
    assert isinstance(e.obj, SubscriptionView) and isinstance(e.previous, SubscriptionView)
    assert (e.obj.status, e.previous.status) == ("active", "trialing")
    assert e.previous.items == e.obj.items
    assert (
        parse(
            se.encode(se.event("customer.updated", se.customer("c"))), partition=0, offset=0
        ).previous
        is None
    )
