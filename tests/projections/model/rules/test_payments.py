"""Purchases (checkout sessions, payment intents, invoices), charges and refunds."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest

from launcher.stripe import events as se
from projections.model.events import StripeEvent
from projections.model.rows import ChargeRow, PurchaseRow, RefundRow, Row
from projections.model.rules import rule_for
from projections.model.rules.payments import (
    charge_snapshot,
    checkout_session_snapshot,
    invoice_payment_snapshot,
    invoice_snapshot,
    payment_intent_snapshot,
    refund_snapshot,
)
from tests.support.parsed import ev


@pytest.mark.parametrize(
    ("payment_status", "mode", "paid"),
    [
        ("paid", "payment", True),
        ("unpaid", "payment", False),
        ("paid", "subscription", False),
        ("no_payment_required", "payment", True),  # a 100% discount (issue 19, point 9)
    ],
)
def test_checkout_session_paid(payment_status: str, mode: str, paid: bool) -> None:
    cs = se.checkout_session(
        "cs_1",
        customer="cus_1",
        movie_id="7",
        payment_intent="pi_1",
        payment_status=payment_status,
        mode=mode,
    )
    row = checkout_session_snapshot(ev("checkout.session.completed", cs), None)
    assert row.paid is paid and row.kind == "checkout_session"
    assert row.metadata == (("movie_id", "7"),) and row.customer == "cus_1"
    assert row.payment_intent == ("pi_1" if mode == "payment" else None)


@pytest.mark.parametrize(
    ("status", "paid"),
    [
        ("succeeded", True),
        ("processing", False),
        ("canceled", False),
        ("requires_payment_method", False),
    ],
)
def test_payment_intent_paid(status: str, paid: bool) -> None:
    pi = se.payment_intent("pi_1", customer="cus_1", movie_id="7", status=status, amount=500)
    row = payment_intent_snapshot(ev("payment_intent.succeeded", pi), None)
    assert row.paid is paid and row.amount == 500 and row.payment_intent == "pi_1"


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(("status", "paid"), [("paid", True), ("open", False), ("void", False)])
def test_invoice_paid_both_shapes(legacy: bool, status: str, paid: bool) -> None:
    inv = se.invoice(
        "in_1",
        customer="cus_1",
        lines=[("pa", "prod_b"), ("pb", "prod_a")],
        status=status,
        payment_intent="pi_1",
        legacy=legacy,
    )
    version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
    row = invoice_snapshot(ev("invoice.paid", inv, api_version=version), None)
    assert row.paid is paid and row.kind == "invoice"
    assert row.product_ids == ("prod_a", "prod_b") and row.payment_intent == "pi_1"


def test_charge_and_refunds() -> None:
    ch = se.charge(
        "ch_1",
        customer="cus_1",
        payment_intent="pi_1",
        amount=399,
        amount_refunded=399,
        refunded=True,
    )
    row = charge_snapshot(ev("charge.refunded", ch), None)
    assert (row.customer, row.payment_intent, row.refunded, row.amount_refunded) == (
        "cus_1",
        "pi_1",
        True,
        399,
    )
    re = se.refund("re_1", charge="ch_1", payment_intent="pi_1", amount=100, status="pending")
    r = refund_snapshot(ev("refund.created", re), None)
    assert (r.charge, r.payment_intent, r.amount, r.status, r.customer) == (
        "ch_1",
        "pi_1",
        100,
        "pending",
        None,
    )
    re["status"] = "succeeded"
    r2 = refund_snapshot(ev("charge.refund.updated", re), r)
    assert r2.status == "succeeded"


def test_checkout_line_items_name_the_products_bought() -> None:
    cs = se.checkout_session("cs_1", customer="cus_1", payment_intent="pi_1")
    cs["line_items"] = {
        "object": "list",
        "data": [{"price": {"id": "price_m", "product": "prod_m"}}],
    }
    row = checkout_session_snapshot(ev("checkout.session.completed", cs), None)
    assert row.product_ids == ("prod_m",) and row.metadata == ()


def test_invoice_payment_links_an_invoice_to_its_payment_intent() -> None:
    obj = {
        "id": "inpay_1",
        "object": "invoice_payment",
        "invoice": "in_1",
        "status": "paid",
        "is_default": True,
        "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
    }
    row = invoice_payment_snapshot(ev("invoice_payment.paid", obj), None)
    assert (row.id, row.invoice, row.payment_intent, row.status) == (
        "inpay_1",
        "in_1",
        "pi_1",
        "paid",
    )


def _last(events: list[StripeEvent]) -> Row | None:
    row: Row | None = None
    for e in events:
        spec = rule_for(e.type)
        assert spec is not None
        row = spec.apply(e, row) or row
    return row


def test_same_second_lifecycle_in_any_order() -> None:
    inv = se.invoice("in_1", customer="cus_1", lines=[("p", "prod")], status="open")
    paid = {**inv, "status": "paid"}
    invoices = [
        ev("invoice.finalized", inv, created=5),
        ev("invoice.paid", paid, created=5),
        ev("invoice.payment_succeeded", paid, created=5),
    ]
    pi = se.payment_intent("pi_1", customer="cus_1", status="processing")
    intents = [
        ev("payment_intent.processing", pi, created=5),
        ev("payment_intent.succeeded", {**pi, "status": "succeeded"}, created=5),
    ]
    re = se.refund("re_1", charge="ch_1", payment_intent="pi_1", amount=5, status="pending")
    refunds = [
        ev("refund.updated", re, created=5),
        ev("refund.updated", {**re, "status": "succeeded"}, created=5),
    ]
    ch = se.charge("ch_1", customer="cus_1", payment_intent="pi_1", amount=400)
    charges = [
        ev("charge.succeeded", ch, created=5),
        ev("charge.refunded", {**ch, "amount_refunded": 100}, created=5),
        ev("charge.refunded", {**ch, "amount_refunded": 400, "refunded": True}, created=5),
    ]
    cs = se.checkout_session("cs_1", customer="cus_1", payment_status="unpaid", status="complete")
    sessions = [
        ev("checkout.session.completed", cs, created=5),
        ev("checkout.session.async_payment_succeeded", {**cs, "payment_status": "paid"}, created=5),
    ]
    cases: list[tuple[list[StripeEvent], Callable[[Row | None], bool]]] = [
        (invoices, lambda r: isinstance(r, PurchaseRow) and r.paid),
        (intents, lambda r: isinstance(r, PurchaseRow) and r.paid),
        (refunds, lambda r: isinstance(r, RefundRow) and r.status == "succeeded"),
        (charges, lambda r: isinstance(r, ChargeRow) and r.refunded and r.amount_refunded == 400),
        (sessions, lambda r: isinstance(r, PurchaseRow) and r.paid),
    ]
    for history, check in cases:
        # log positions against the lifecycle: only the stage can put them in order
        backwards = [dataclasses.replace(e, offset=-n) for n, e in enumerate(history)]
        for order in itertools.permutations(backwards):
            assert check(_last(list(order))), [e.type for e in order]
