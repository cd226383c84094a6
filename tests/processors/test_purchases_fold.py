"""One-off purchases folded from the real log on real Postgres (issue 19, points 8 and 9):
a 100%-discount checkout grants its movie; an invoice event that does not name its payment
intent leaves the link an earlier (or later-delivered, older) event gave, so a full refund
of a one-off movie invoice still revokes it."""

from __future__ import annotations

from typing import Any

from entitled.settings import Settings
from launcher.stripe import events as se
from launcher.stripe import payments as sp
from tests.support.db import entitlements
from tests.support.infold import fold_log
from tests.support.kafka import publish


async def test_a_checkout_with_no_payment_required_grants_its_movie(settings: Settings) -> None:
    session = sp.checkout_session(
        customer="cus_free9", movie_id="m9", payment_status="no_payment_required", amount_total=0
    )
    publish(settings, [se.event("checkout.session.completed", session, created=1000)])
    await fold_log(settings)
    assert entitlements(settings)["cus_free9"] == ([], ["m9"])


def _invoice_events(customer: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A paid one-off movie invoice naming its payment intent (current shape: `payments`),
    a credit note's later `invoice.updated` that names none, and the full refund."""
    pi = f"pi_{customer}"
    paid = sp.invoice(
        f"in_{customer}", customer=customer, lines=[("price_m8", "prod_m8")], payment_intent=pi
    )
    assert paid["payments"]["data"]  # the link
    updated = {k: v for k, v in paid.items() if k != "payments"}
    refund = sp.refund(
        charge=f"ch_{customer}", payment_intent=pi, amount=paid["amount_paid"], created=1020
    )
    return (
        se.event("invoice.paid", paid, created=1000),
        se.event("invoice.updated", updated, created=1010),
        se.event("refund.created", refund, created=1020),
    )


async def test_an_invoice_event_without_its_payment_intent_keeps_the_link(
    settings: Settings,
) -> None:
    publish(settings, [se.event("product.created", se.product("prod_m8", movie_id="m8"))])
    paid, updated, refund = _invoice_events("cus_inlog8")
    publish(settings, [paid, updated])
    await fold_log(settings)
    assert entitlements(settings)["cus_inlog8"] == ([], ["m8"])  # bought
    publish(settings, [refund])
    # The older event naming the link delivered after the newer one that does not.
    paid, updated, refund = _invoice_events("cus_reversed8")
    publish(settings, [updated, paid, refund])
    await fold_log(settings)
    held = entitlements(settings)
    assert held["cus_inlog8"] == ([], [])  # fully refunded: revoked
    assert held["cus_reversed8"] == ([], [])
