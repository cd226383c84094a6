"""A movie bought through Checkout without session metadata: the webhook grants nothing
(Stripe never sends `line_items`); the hydrator's snapshot of the session with `line_items`
expanded grants the movie; a full refund of its payment intent revokes it. Real worker,
events shaped as the ingest and the hydrator write them."""

from __future__ import annotations

import time

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs


def test_a_hydrated_checkout_grants_and_its_refund_revokes(
    settings: Settings, procs: Procs
) -> None:
    t = int(time.time()) - 600
    session = se.checkout_session("cs_test_h1", customer="cus_h", payment_intent="pi_h", created=t)
    session["metadata"] = {}
    assert "line_items" not in session or not session["line_items"]
    procs.spawn("worker")
    publish(
        settings,
        [
            se.event("product.created", se.product("prod_m7", movie_id="7"), created=t - 100),
            se.event("checkout.session.completed", session, created=t),
        ],
    )
    wait_until(lambda: caught_up(settings), 60, "the worker", procs)
    assert entitlements(settings).get("cus_h", ([], [])) == ([], [])  # nothing says which movie
    hydrated = dict(
        session,
        line_items={
            "object": "list",
            "data": [
                {"object": "item", "id": "li_1", "price": {"id": "price_m7", "product": "prod_m7"}}
            ],
            "has_more": False,
        },
    )
    # as the hydrator logs it: a snapshot stamped with the time it was read
    publish(
        settings,
        [se.event("checkout.session.completed", hydrated, id="evt_hydrate_h1", created=t + 5)],
    )
    wait_until(lambda: entitlements(settings).get("cus_h") == ([], ["7"]), 60, "the movie", procs)
    charge = se.charge("ch_h", customer="cus_h", payment_intent="pi_h", created=t + 60)
    refunded = dict(charge, amount_refunded=charge["amount"], refunded=True)
    publish(settings, [se.event("charge.refunded", refunded, created=t + 60)])
    wait_until(lambda: entitlements(settings).get("cus_h") == ([], []), 60, "the revocation", procs)
