"""parse(): the envelope, the typed views for both API shapes, and what is not an event."""

from __future__ import annotations

import orjson
import pytest

from entitled.shell import stripe_events as se
from projections.errors import EventParseError
from projections.events import (
    ChargeView,
    CheckoutSessionView,
    CustomerView,
    InvoiceView,
    ItemView,
    LineView,
    PaymentIntentView,
    PriceView,
    ProductView,
    RefundView,
    SubscriptionView,
    parse,
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
            ChargeView("ch_1", "cus_1", "pi_1", 399, 0, False),
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
        b'{"id": "evt_1", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "type": "x", "created": "1", "data": {"object": {}}}',
        b'{"id": "evt_1", "type": "customer.created", "created": 1,'
        b' "data": {"object": {"object": "customer"}}}',
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
