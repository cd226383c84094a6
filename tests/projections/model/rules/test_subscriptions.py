"""customer.subscription.* rules, both API shapes."""

from __future__ import annotations

import pytest

from launcher.stripe import events as se
from projections.model.rows import ItemRow
from projections.model.rules import rule_for
from projections.model.rules.subscriptions import SUBSCRIPTION_TYPES, subscription_snapshot
from tests.support.parsed import ev

STATUSES = [
    "active",
    "trialing",
    "past_due",
    "canceled",
    "unpaid",
    "incomplete",
    "incomplete_expired",
    "paused",
]


@pytest.mark.parametrize("legacy", [False, True])
def test_snapshot_of_both_shapes(legacy: bool) -> None:
    sub = se.subscription(
        "sub_1",
        customer="cus_1",
        items=[("price_a", "prod_a")],
        item_ids=["si_a"],
        legacy=legacy,
        period_start=100,
        period_end=200,
        cancel_at_period_end=True,
    )
    version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
    row = subscription_snapshot(ev("customer.subscription.updated", sub, api_version=version), None)
    assert (row.id, row.customer, row.status, row.cancel_at_period_end) == (
        "sub_1",
        "cus_1",
        "active",
        True,
    )
    assert row.items == (ItemRow("si_a", "price_a", "prod_a", 100, 200),)


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_is_mirrored(status: str) -> None:
    sub = se.subscription("sub_1", customer="cus_1", items=[("p", "prod")], status=status)
    assert subscription_snapshot(ev("customer.subscription.updated", sub), None).status == status


def test_items_added_and_removed() -> None:
    one = se.subscription("sub_1", customer="c", items=[("pa", "a")], item_ids=["si_a"])
    two = se.subscription(
        "sub_1", customer="c", items=[("pa", "a"), ("pb", "b")], item_ids=["si_a", "si_b"]
    )
    r1 = subscription_snapshot(ev("customer.subscription.created", one, created=1), None)
    r2 = subscription_snapshot(ev("customer.subscription.updated", two, created=2), r1)
    assert [i.product for i in r2.items] == ["a", "b"]
    r3 = subscription_snapshot(ev("customer.subscription.updated", one, created=3), r2)
    assert [i.id for i in r3.items] == ["si_a"]


def test_deleted_is_canceled_and_terminal() -> None:
    sub = se.subscription("sub_1", customer="c", items=[("p", "prod")], status="active")
    row = subscription_snapshot(ev("customer.subscription.deleted", sub), None)
    assert row.status == "canceled" and row.stamp.rank == 2


def test_all_lifecycle_types_use_the_one_rule() -> None:
    for t in SUBSCRIPTION_TYPES:
        spec = rule_for(t)
        assert spec is not None and spec.fn is subscription_snapshot


@pytest.mark.parametrize("legacy", [False, True])
def test_item_quantity_is_kept_one_when_absent(legacy: bool) -> None:
    sub = se.subscription(
        "sub_1",
        customer="c",
        items=[("pa", "a"), ("pb", "b")],
        item_ids=["si_a", "si_b"],
        legacy=legacy,
    )
    sub["items"]["data"][0]["quantity"] = 0
    del sub["items"]["data"][1]["quantity"]
    version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
    row = subscription_snapshot(ev("customer.subscription.updated", sub, api_version=version), None)
    assert [(i.id, i.quantity) for i in row.items] == [("si_a", 0), ("si_b", 1)]
