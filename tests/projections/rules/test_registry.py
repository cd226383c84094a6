"""The registry: one rule per type, the shared newest-snapshot check, unknown types."""

from __future__ import annotations

import pytest
from fold_helpers import ev

from entitled.shell import stripe_events as se
from projections.rows import TABLES, ProductRow
from projections.rules import RULES, fold, rule_for, supersedes
from projections.schema import MIRROR_TABLES


def test_families_are_registered_to_their_tables() -> None:
    tables = {spec.table for spec in RULES.values()}
    assert tables == set(TABLES) == set(MIRROR_TABLES)
    expected = {
        "customer.subscription.updated": "subscriptions",
        "customer.subscription.deleted": "subscriptions",
        "product.updated": "products",
        "price.created": "prices",
        "customer.deleted": "customers",
        "checkout.session.completed": "purchases",
        "payment_intent.succeeded": "purchases",
        "invoice.paid": "purchases",
        "charge.refunded": "charges",
        "charge.refund.updated": "refunds",
        "refund.created": "refunds",
        "charge.dispute.closed": "disputes",
        "invoice_payment.paid": "invoice_payments",
    }
    for event_type, table in expected.items():
        spec = rule_for(event_type)
        assert spec is not None and spec.table == table and spec.type == event_type


def test_unknown_types_have_no_rule() -> None:
    assert rule_for("coupon.created") is None
    assert rule_for("customer.subscription.exploded") is None


def test_two_rules_for_one_type_or_a_bad_table_are_refused() -> None:
    with pytest.raises(ValueError):
        fold("product.created", table="products")(lambda e, c: None)
    with pytest.raises(ValueError):
        fold("thing.created", table="things")


def test_keep_the_newest_snapshot() -> None:
    spec = rule_for("product.updated")
    assert spec is not None
    new = ev("product.updated", se.product("prod_1", name="new"), created=20)
    old = ev("product.updated", se.product("prod_1", name="old"), created=10)
    row = spec.apply(new, None)
    assert isinstance(row, ProductRow) and row.name == "new"
    assert spec.apply(old, row) is None
    assert not supersedes(old, row)
    assert supersedes(ev("product.updated", se.product("prod_1"), created=21), row)


def test_same_second_terminal_beats_update_beats_create() -> None:
    product = se.product("prod_1")
    created = ev("product.created", product, created=5, offset=300)
    updated = ev("product.updated", product, created=5, offset=200)
    deleted = ev("product.deleted", product, created=5, offset=100)
    spec = rule_for("product.updated")
    assert spec is not None
    row = spec.apply(updated, None)
    assert row is not None
    assert spec.apply(created, row) is None
    tomb = spec.apply(deleted, row)
    assert isinstance(tomb, ProductRow) and tomb.deleted


def test_tombstone_is_never_resurrected_by_a_later_stamped_update() -> None:
    spec = rule_for("product.updated")
    assert spec is not None
    tomb = spec.apply(ev("product.deleted", se.product("prod_1"), created=5), None)
    assert tomb is not None
    assert spec.apply(ev("product.updated", se.product("prod_1"), created=6), tomb) is None
    # and in the other order the deletion still wins: the result is order-independent
    live = spec.apply(ev("product.updated", se.product("prod_1"), created=6), None)
    assert live is not None
    again = spec.apply(ev("product.deleted", se.product("prod_1"), created=5), live)
    assert isinstance(again, ProductRow) and again.deleted


def test_a_mismatched_object_is_poison() -> None:
    spec = rule_for("product.updated")
    assert spec is not None
    with pytest.raises(TypeError):
        spec.apply(ev("product.updated", se.customer("cus_1")), None)
