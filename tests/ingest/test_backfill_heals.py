"""A backfill heals drift: a lost webhook is made good by the snapshot a backfill reads.

Real localstripe, Kafka, Postgres and worker process. localstripe cannot put a subscription
into `unpaid`, but a failed renewal makes it `past_due`; with the entitling statuses set to
`active,trialing` (a supported configuration) that is the same case as the lost
`customer.subscription.updated` to `unpaid`: a non-terminal update that takes access away.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import stripe

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.ingest.stripe_seed import subscribe
from tests.support.db import caught_up, entitlements
from tests.support.kafka import publish
from tests.support.localstripe import API_KEY
from tests.support.polling import wait_until
from tests.support.processes import Procs

_GOOD_CARD: dict[str, Any] = {
    "number": "4242424242424242",
    "exp_month": 12,
    "exp_year": 2030,
    "cvc": "123",
}
# localstripe: attaching succeeds, every charge is declined
_DECLINED_CARD: dict[str, Any] = {**_GOOD_CARD, "number": "4000000000000341"}


def _raw(client: stripe.StripeClient, path: str) -> dict[str, Any]:
    """The object as the API sends it (what a webhook would carry)."""
    found: dict[str, Any] = orjson.loads(client.raw_request("get", path).body)
    return found


def test_backfill_after_a_lost_update_revokes(
    settings: Settings, procs: Procs, localstripe: str
) -> None:
    client = stripe.StripeClient(API_KEY, base_addresses={"api": localstripe})
    product = client.v1.products.create(
        params={"name": "Action", "metadata": {"subscription_group": "action"}}
    )
    monthly = client.v1.plans.create(
        params={"amount": 999, "currency": "usd", "interval": "month", "product": product.id}
    )
    yearly = client.v1.plans.create(
        params={"amount": 9999, "currency": "usd", "interval": "year", "product": product.id}
    )
    customer, sub = subscribe(client, monthly.id, _GOOD_CARD)
    active = _raw(client, f"/v1/subscriptions/{sub.id}")
    assert active["status"] == "active"
    t0 = int(active["created"])

    # What Stripe sent and we received: the product, the subscription created incomplete
    # and, a second later, updated to active once its first invoice was paid.
    publish(
        settings,
        [
            se.event("product.created", _raw(client, f"/v1/products/{product.id}"), created=t0),
            se.event(
                "customer.subscription.created", {**active, "status": "incomplete"}, created=t0
            ),
            se.event(
                "customer.subscription.updated",
                active,
                created=t0 + 1,
                previous_attributes={"status": "incomplete"},
            ),
        ],
    )
    procs.spawn("worker", ENTITLED_ENTITLING_STATUSES="active,trialing")
    want_access: dict[str, tuple[list[str], list[str]]] = {customer.id: (["action"], [])}
    wait_until(lambda: entitlements(settings) == want_access, 60, "access granted", procs)

    # The renewal fails: Stripe makes the subscription past_due and sends
    # customer.subscription.updated, which never reaches us.
    declined = client.v1.payment_methods.create(params={"type": "card", "card": _DECLINED_CARD})
    client.v1.payment_methods.attach(declined.id, params={"customer": customer.id})
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": declined.id}}
    )
    item = active["items"]["data"][0]["id"]
    client.v1.subscriptions.update(sub.id, params={"items": [{"id": item, "plan": yearly.id}]})
    assert _raw(client, f"/v1/subscriptions/{sub.id}")["status"] == "past_due"
    # Read strictly after the last webhook we have (created t0 + 1), as a later backfill would.
    wait_until(lambda: time.time() >= t0 + 2, 5, "the clock to pass the last webhook")
    assert entitlements(settings) == want_access  # the drift: we still grant

    procs.run(
        "backfill",
        "--lists",
        "products,plans,customers,subscriptions",
        name="backfill",
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=localstripe,
    )

    want_revoked: dict[str, tuple[list[str], list[str]]] = {customer.id: ([], [])}
    wait_until(lambda: entitlements(settings) == want_revoked, 60, "access revoked", procs)
    wait_until(lambda: caught_up(settings), 60, "the worker at the log end", procs)
    assert entitlements(settings) == want_revoked
