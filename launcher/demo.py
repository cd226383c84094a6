"""The WebFlicks demo data of `entitled dev`: the catalogue and a few signed Stripe events.

The events go through the real ingest endpoint (so through the log and the worker), with
fixed event ids and timestamps: sending them again on every start is harmless, because
the fold skips event ids it has already applied.

    alice (cus_demo_alice)  subscribes to the "action" package
    bob   (cus_demo_bob)    bought one movie (40, "Indiana Jones and the Last Crusade")
    carol (cus_demo_carol)  has nothing yet
    dave  (cus_demo_dave)   subscribes to the "scifi" package, sold through a Stripe
                            Entitlements feature (`group:scifi`) instead of product metadata
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import psycopg

from launcher.stripe import events as se
from launcher.stripe import features as sf

__all__ = [
    "CUSTOMERS",
    "FEATURE_PRODUCTS",
    "PRICES",
    "PRODUCTS",
    "DemoRefused",
    "events",
    "load_catalogue_if_empty",
    "send",
]

# 2026-01-01T00:00:00Z: fixed, so that a re-sent demo event is byte-for-byte the old one.
CREATED = 1767225600
# The demo subscription does not lapse: its billing period ends in 2100.
PERIOD_END = 4102444800

# product id -> (name, subscription groups, movie id)
PRODUCTS: dict[str, tuple[str, str | None, str | None]] = {
    "prod_demo_action": ("WebFlicks Action package", "action", None),
    "prod_demo_animated": ("WebFlicks Animated package", "animated", None),
    "prod_demo_movie_40": ("Indiana Jones and the Last Crusade (to own)", None, "40"),
}
# packages sold through Stripe Entitlements features: product id -> (name, lookup keys)
FEATURE_PRODUCTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "prod_demo_scifi": ("WebFlicks Sci-Fi package (a Stripe feature)", ("group:scifi",)),
}
# price id -> (product id, recurring, amount in cents)
PRICES: dict[str, tuple[str, bool, int]] = {
    "price_demo_scifi": ("prod_demo_scifi", True, 699),
    "price_demo_action": ("prod_demo_action", True, 799),
    "price_demo_animated": ("prod_demo_animated", True, 599),
    "price_demo_movie_40": ("prod_demo_movie_40", False, 399),
}
# customer id -> (name, email)
CUSTOMERS: dict[str, tuple[str, str]] = {
    "cus_demo_alice": ("Alice Action (subscribes to action)", "alice@example.com"),
    "cus_demo_bob": ("Bob Buyer (bought movie 40)", "bob@example.com"),
    "cus_demo_carol": ("Carol Curious (nothing yet)", "carol@example.com"),
    "cus_demo_dave": ("Dave Features (scifi through a Stripe feature)", "dave@example.com"),
}


class DemoRefused(Exception):
    """The ingest answered a demo event with something other than 200."""


def events() -> Iterator[dict[str, Any]]:
    """The demo events in a sensible order: products, prices, customers, what they bought."""
    for pid, (name, groups, movie_id) in PRODUCTS.items():
        obj = se.product(pid, name=name, groups=groups, movie_id=movie_id, created=CREATED)
        yield _event("product.created", obj, f"evt_demo_{pid}")
    for pid, (name, keys) in FEATURE_PRODUCTS.items():
        obj = se.product(pid, name=name, created=CREATED)
        yield _event("product.created", obj, f"evt_demo_{pid}")
        # what backfill / reconcile --features would log for it (Stripe sends no webhook)
        yield sf.product_features_snapshot(pid, keys, created=CREATED)
    for price_id, (pid, recurring, amount) in PRICES.items():
        obj = se.price(
            price_id, product=pid, recurring=recurring, unit_amount=amount, created=CREATED
        )
        yield _event("price.created", obj, f"evt_demo_{price_id}")
    for cid, (name, email) in CUSTOMERS.items():
        obj = se.customer(cid, name=name, email=email, created=CREATED)
        yield _event("customer.created", obj, f"evt_demo_{cid}")
    for who, package in (("alice", "action"), ("dave", "scifi")):
        sub = se.subscription(
            f"sub_demo_{who}_{package}",
            customer=f"cus_demo_{who}",
            items=[(f"price_demo_{package}", f"prod_demo_{package}")],
            item_ids=[f"si_demo_{who}_{package}"],
            created=CREATED,
            period_end=PERIOD_END,
        )
        yield _event("customer.subscription.created", sub, f"evt_demo_sub_{who}")
    session = se.checkout_session(
        "cs_test_demo_bob_movie_40",
        customer="cus_demo_bob",
        movie_id="40",
        payment_intent="pi_demo_bob_movie_40",
        created=CREATED,
    )
    yield _event("checkout.session.completed", session, "evt_demo_checkout_bob")


def _event(type: str, obj: dict[str, Any], id: str) -> dict[str, Any]:
    evt = se.event(type, obj, id=id, created=CREATED)
    # No random request id: a re-sent demo event is byte for byte the one sent before.
    evt["request"] = {"id": None, "idempotency_key": None}
    return evt


def send(webhook_url: str, secret: str, *, timeout_s: float = 60.0) -> int:
    """POST every demo event, signed with `secret`; return how many were accepted.

    A 503 (Kafka not ready yet) is retried until `timeout_s`; any other non-200 raises.
    """
    deadline = time.monotonic() + timeout_s
    sent = 0
    with httpx.Client(timeout=10.0) as client:
        for evt in events():
            body = se.encode(evt)
            while True:
                headers = {
                    "Stripe-Signature": se.sign_header(body, secret),
                    "Content-Type": "application/json",
                }
                response = client.post(webhook_url, content=body, headers=headers)
                if response.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if response.status_code != 200:
                raise DemoRefused(
                    f"the ingest refused demo event {evt['id']}: "
                    f"{response.status_code} {response.text[:200]}"
                )
            sent += 1
    return sent


async def load_catalogue_if_empty(database_url: str) -> int:
    """Load `projections/demo_catalog.jsonl` when `entitled.movies` is empty; return how many
    movies were loaded (0: the catalogue already had movies, which are the user's to keep)."""
    from projections import catalog

    source = resources.files("projections").joinpath("demo_catalog.jsonl")
    async with await psycopg.AsyncConnection.connect(database_url) as conn, conn.transaction():
        with resources.as_file(source) as path:
            result = await catalog.load_if_empty(conn, catalog.read_file(path))
    if result is None:
        return 0
    return result.inserted + result.updated
