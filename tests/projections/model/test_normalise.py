"""Each upcaster maps its old shape to the current one, and never mutates its input."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from launcher.stripe import events as se
from projections.model import normalise as n

OLD, NEW = se.LEGACY_API_VERSION, se.CURRENT_API_VERSION
Obj = dict[str, Any]


def _upcast(upcaster: Callable[[Obj, str | None], Obj], obj: Obj) -> Obj:
    """`upcaster` applied to an old-shape `obj`, which it must leave untouched."""
    before = copy.deepcopy(obj)
    out = upcaster(obj, OLD)
    assert obj == before
    return out


def test_is_older() -> None:
    assert n.is_older(OLD, n.BASIL)
    assert n.is_older(None, n.BASIL)
    assert not n.is_older(NEW, n.BASIL)
    assert not n.is_older(n.BASIL, n.BASIL)


def test_subscription_periods_move_to_items() -> None:
    sub = se.subscription(
        customer="cus_1", items=[("p", "prod")], legacy=True, period_start=5, period_end=9
    )
    out = _upcast(n.subscription_periods_to_items, sub)
    assert "current_period_start" not in out and "current_period_end" not in out
    item = out["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (5, 9)


def test_subscription_periods_conflict_decided_by_version() -> None:
    sub = se.subscription(customer="cus_1", items=[("p", "prod")], period_start=5, period_end=9)
    sub.update(current_period_start=1, current_period_end=2)  # both shapes at once
    old = n.subscription_periods_to_items(sub, OLD)["items"]["data"][0]
    new = n.subscription_periods_to_items(sub, NEW)["items"]["data"][0]
    assert (old["current_period_start"], old["current_period_end"]) == (1, 2)
    assert (new["current_period_start"], new["current_period_end"]) == (5, 9)


def test_current_subscription_is_left_alone() -> None:
    sub = se.subscription(customer="cus_1", items=[("p", "prod")])
    assert n.subscription_periods_to_items(sub, NEW) is sub
    assert n.item_plan_to_price(sub, NEW) is sub


def test_item_plan_becomes_price() -> None:
    sub = se.subscription(customer="cus_1", items=[("price_a", "prod_a")], legacy=True)
    out = _upcast(n.item_plan_to_price, sub)
    item = out["items"]["data"][0]
    assert "plan" not in item
    assert item["price"]["id"] == "price_a" and item["price"]["product"] == "prod_a"


def test_item_price_wins_over_plan() -> None:
    sub = se.subscription(customer="cus_1", items=[("price_a", "prod_a")])
    sub["items"]["data"][0]["plan"] = {"id": "plan_x", "product": "prod_x"}
    item = n.item_plan_to_price(sub, NEW)["items"]["data"][0]
    assert item["price"]["id"] == "price_a" and "plan" not in item


def test_invoice_subscription_moves_to_parent() -> None:
    inv = se.invoice(customer="cus_1", lines=[("p", "prod")], subscription="sub_1", legacy=True)
    out = _upcast(n.invoice_subscription_to_parent, inv)
    assert "subscription" not in out
    assert out["parent"]["subscription_details"]["subscription"] == "sub_1"
    # a one-off legacy invoice: no subscription, no parent invented
    one_off = se.invoice(customer="cus_1", lines=[("p", "prod")], legacy=True)
    assert "parent" not in n.invoice_subscription_to_parent(one_off, OLD)


def test_invoice_payment_intent_moves_to_payments() -> None:
    inv = se.invoice(customer="cus_1", lines=[("p", "prod")], payment_intent="pi_1", legacy=True)
    out = n.invoice_payment_intent_to_payments(inv, OLD)
    assert "payment_intent" not in out and inv["payment_intent"] == "pi_1"
    assert out["payments"]["data"][0]["payment"]["payment_intent"] == "pi_1"


def test_invoice_line_price_becomes_pricing() -> None:
    inv = se.invoice(customer="cus_1", lines=[("price_a", "prod_a")], legacy=True)
    out = _upcast(n.invoice_line_price_to_pricing, inv)
    line = out["lines"]["data"][0]
    assert "price" not in line and "plan" not in line
    assert line["pricing"]["price_details"] == {"price": "price_a", "product": "prod_a"}


def test_invoice_line_plan_only_and_string_price() -> None:
    inv = se.invoice(customer="cus_1", lines=[("price_a", "prod_a")], legacy=True)
    line = inv["lines"]["data"][0]
    line["price"] = None
    line["plan"] = {"id": "plan_a", "product": {"id": "prod_b", "object": "product"}}
    out = n.invoice_line_price_to_pricing(inv, OLD)["lines"]["data"][0]
    assert out["pricing"]["price_details"] == {"price": "plan_a", "product": "prod_b"}
    line.update(price="price_s", plan=None)
    out = n.invoice_line_price_to_pricing(inv, OLD)["lines"]["data"][0]
    assert out["pricing"]["price_details"] == {"price": "price_s", "product": None}


def test_normalise_chains_to_current_shape_for_old_and_mixed_events() -> None:
    for legacy in (True, False):
        sub = se.subscription(
            customer="c", items=[("p", "prod")], legacy=legacy, period_start=3, period_end=4
        )
        inv = se.invoice(
            customer="c",
            lines=[("p", "prod")],
            subscription="s",
            payment_intent="pi",
            legacy=legacy,
        )
        for version in (OLD, NEW, None):
            s = n.normalise(sub, version)
            item = s["items"]["data"][0]
            assert item["price"]["product"] == "prod" and "plan" not in item
            assert item["current_period_end"] == 4 and "current_period_end" not in s
            i = n.normalise(inv, version)
            assert i["parent"]["subscription_details"]["subscription"] == "s"
            assert i["payments"]["data"][0]["payment"]["payment_intent"] == "pi"
            assert i["lines"]["data"][0]["pricing"]["price_details"]["product"] == "prod"
            assert "subscription" not in i and "payment_intent" not in i
    assert n.normalise(sub, NEW) is not sub


def test_odd_shapes_are_left_for_the_views_to_default() -> None:
    sub = {
        "object": "subscription",
        "current_period_end": 4,
        "items": {"data": ["x", 3, {"plan": "p"}]},
    }
    out = n.normalise(sub, OLD)
    assert out["items"]["data"] == [
        {"price": "p", "current_period_start": None, "current_period_end": 4}
    ]
    inv = {
        "object": "invoice",
        "subscription": "s",
        "parent": {"subscription_details": "x"},
        "lines": {"data": ["x", {"price": "pr"}]},
    }
    out = n.normalise(inv, OLD)
    assert out["parent"]["subscription_details"]["subscription"] == "s"
    assert out["lines"]["data"] == [
        {"pricing": {"type": "price_details", "price_details": {"price": "pr", "product": None}}}
    ]
