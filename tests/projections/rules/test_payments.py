"""Purchases (checkout sessions, payment intents, invoices), charges and refunds."""

from __future__ import annotations

import pytest
from fold_helpers import ev

from entitled.shell import stripe_events as se
from projections.rules.payments import (
    charge_snapshot,
    checkout_session_snapshot,
    invoice_snapshot,
    payment_intent_snapshot,
    refund_snapshot,
)


@pytest.mark.parametrize(
    ("payment_status", "mode", "paid"),
    [
        ("paid", "payment", True),
        ("unpaid", "payment", False),
        ("paid", "subscription", False),
        ("no_payment_required", "payment", False),
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
