"""Objects created in a localstripe through stripe-python, for backfill and reconcile tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stripe

# localstripe has plans but no /v1/prices and no checkout sessions.
LOCALSTRIPE_LISTS = ("products", "plans", "customers", "subscriptions", "payment_intents")
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def subscribe(
    client: stripe.StripeClient, plan: str, card: dict[str, Any] = CARD
) -> tuple[Any, Any]:
    """A new customer paying with `card` by default, subscribed to `plan`: (customer, sub)."""
    method = client.v1.payment_methods.create(params={"type": "card", "card": card})
    customer = client.v1.customers.create(
        params={
            "payment_method": method.id,
            "invoice_settings": {"default_payment_method": method.id},
        }
    )
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"plan": plan}]}
    )
    return customer, sub


@dataclass
class Seeded:
    ids: dict[str, list[str]] = field(default_factory=dict)  # list name -> object ids
    customer_of: dict[str, str] = field(default_factory=dict)  # object id -> customer id

    def add(self, list_name: str, obj_id: str, customer: str | None = None) -> None:
        self.ids.setdefault(list_name, []).append(obj_id)
        if customer:
            self.customer_of[obj_id] = customer


def seed(base: str, api_key: str, *, customers: int = 2) -> Seeded:
    """WebFlicks: two packages, one movie; `customers` subscribers, each buying the movie."""
    client = stripe.StripeClient(api_key, base_addresses={"api": base})
    out = Seeded()
    plans = []
    for name, metadata in (
        ("Action", {"subscription_group": "action"}),
        ("Action+Animated", {"subscription_group": "action,animated"}),
        ("Die Hard", {"movie_id": "1"}),
    ):
        product = client.v1.products.create(params={"name": name, "metadata": metadata})
        out.add("products", product.id)
        plan = client.v1.plans.create(
            params={"amount": 999, "currency": "usd", "interval": "month", "product": product.id}
        )
        out.add("plans", plan.id)
        plans.append(plan)
    for n in range(customers):
        pm = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
        customer = client.v1.customers.create(
            params={
                "email": f"viewer{n}@webflicks.test",
                "payment_method": pm.id,
                "invoice_settings": {"default_payment_method": pm.id},
            }
        )
        out.add("customers", customer.id, customer.id)
        sub = client.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"plan": plans[n % 2].id}]}
        )
        out.add("subscriptions", sub.id, customer.id)
        pi = client.v1.payment_intents.create(
            params={
                "amount": 399,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": pm.id,
                "metadata": {"movie_id": "1"},
            }
        )
        client.v1.payment_intents.confirm(pi.id)
        out.add("payment_intents", pi.id, customer.id)
    # Subscriptions pay their first invoice with a payment intent of their own.
    for pi in client.v1.payment_intents.list(params={"limit": 100}).data:
        if pi.id not in out.ids["payment_intents"]:
            out.add("payment_intents", pi.id, pi.customer)
    return out
