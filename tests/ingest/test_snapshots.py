"""Snapshot events built from listed Stripe objects (pure, no network)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest

from ingest.keys import routing_key
from ingest.snapshots import DEFAULT_LISTS, LISTS, snapshot_event, snapshot_id


def _fixture(name: str) -> dict[str, Any]:
    text = resources.files("launcher").joinpath("stripe_fixtures/fixtures3.json").read_text()
    found: dict[str, Any] = json.loads(text)["resources"][name]
    return copy.deepcopy(found)


def test_same_state_same_id_changed_state_new_id() -> None:
    product = _fixture("product")
    assert snapshot_id(product) == snapshot_id(copy.deepcopy(product))
    reordered = dict(reversed(list(product.items())))
    assert snapshot_id(reordered) == snapshot_id(product)
    changed = {**product, "metadata": {"subscription_group": "action"}}
    assert snapshot_id(changed) != snapshot_id(product)
    assert snapshot_id(product).startswith("evt_backfill_")


def test_snapshot_event_shape() -> None:
    subscription = _fixture("subscription")
    read_at = subscription["created"] + 86400
    event = snapshot_event(
        LISTS["subscriptions"], subscription, api_version="2025-03-31.basil", read_at=read_at
    )
    assert event is not None
    assert event["object"] == "event"
    assert event["type"] == "customer.subscription.updated"
    assert event["created"] == read_at
    assert event["data"]["object"] is subscription
    assert event["request"] == {"id": None, "idempotency_key": None}
    assert event["api_version"] == "2025-03-31.basil"
    assert routing_key(event) == subscription["customer"]


@pytest.mark.parametrize(
    ("list_name", "fields", "expected"),
    [
        ("products", {}, "product.updated"),
        ("prices", {}, "price.updated"),
        ("customers", {}, "customer.updated"),
        ("subscriptions", {"status": "active"}, "customer.subscription.updated"),
        ("subscriptions", {"status": "past_due"}, "customer.subscription.updated"),
        ("subscriptions", {"status": "canceled"}, "customer.subscription.deleted"),
        ("subscriptions", {"status": "incomplete_expired"}, "customer.subscription.deleted"),
        ("checkout_sessions", {"status": "complete"}, "checkout.session.completed"),
        ("checkout_sessions", {"status": "expired"}, "checkout.session.expired"),
        ("checkout_sessions", {"status": "open"}, None),
        ("payment_intents", {"status": "succeeded"}, "payment_intent.succeeded"),
        ("payment_intents", {"status": "canceled"}, "payment_intent.canceled"),
        (
            "payment_intents",
            {"status": "requires_capture"},
            "payment_intent.amount_capturable_updated",
        ),
        (
            "payment_intents",
            {"status": "requires_payment_method", "last_payment_error": {"code": "card_declined"}},
            "payment_intent.payment_failed",
        ),
        ("payment_intents", {"status": "requires_payment_method"}, "payment_intent.created"),
        ("charges", {"status": "succeeded", "amount_refunded": 0}, "charge.succeeded"),
        ("charges", {"status": "succeeded", "amount_refunded": 100}, "charge.refunded"),
        ("charges", {"status": "failed"}, "charge.failed"),
        ("refunds", {"status": "succeeded"}, "refund.updated"),
        ("refunds", {"status": "failed"}, "refund.failed"),
        ("invoices", {"status": "paid"}, "invoice.paid"),
        ("invoices", {"status": "void"}, "invoice.voided"),
        ("invoices", {"status": "draft"}, "invoice.updated"),
    ],
)
def test_event_type_by_state(list_name: str, fields: dict[str, Any], expected: str | None) -> None:
    obj = {"id": "x_1", "object": "thing", "created": 1, **fields}
    event = snapshot_event(LISTS[list_name], obj, api_version=None, read_at=2)
    assert (event and event["type"]) == expected


def test_default_lists_exist_and_leave_out_plans() -> None:
    assert all(name in LISTS for name in DEFAULT_LISTS)
    assert "plans" not in DEFAULT_LISTS
    assert LISTS["subscriptions"].params == {"status": "all"}


def test_stamped_with_read_time_and_a_new_id_per_read() -> None:
    """Every read is a new snapshot, even of an unchanged object (issue 19, point 2); its
    stamp is the read time, so it is newer than the webhooks Stripe sent before the read."""
    subscription = {**_fixture("subscription"), "status": "unpaid"}
    early = snapshot_event(LISTS["subscriptions"], subscription, api_version=None, read_at=1_000)
    late = snapshot_event(LISTS["subscriptions"], subscription, api_version=None, read_at=9_000)
    assert early is not None and late is not None
    assert early["created"] == 1_000 and late["created"] == 9_000
    assert early["id"] != late["id"] and early["id"].startswith("evt_backfill_")
    assert early["created"] != subscription["created"]
    changed = snapshot_event(
        LISTS["subscriptions"],
        {**subscription, "status": "active"},
        api_version=None,
        read_at=1_000,
    )
    assert changed is not None and changed["id"] != early["id"]
