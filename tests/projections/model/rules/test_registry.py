"""The registry: one rule per type, the shared newest-snapshot check, unknown types."""

from __future__ import annotations

import pytest

from launcher.stripe import events as se
from projections.model.rows import TABLES, ProductRow
from projections.model.rules import RULES, fold, rule_for, stamp_of, supersedes
from projections.schema import MIRROR_TABLES
from tests.support.parsed import ev


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


@pytest.mark.parametrize(
    ("obj", "lower", "higher"),
    [
        ("invoice", {"status": "draft"}, {"status": "open"}),
        ("invoice", {"status": "open"}, {"status": "uncollectible"}),
        ("invoice", {"status": "uncollectible"}, {"status": "paid"}),
        ("invoice", {"status": "open"}, {"status": "void"}),
        ("payment_intent", {"status": "requires_action"}, {"status": "processing"}),
        ("payment_intent", {"status": "processing"}, {"status": "requires_capture"}),
        ("payment_intent", {"status": "requires_capture"}, {"status": "succeeded"}),
        ("payment_intent", {"status": "requires_payment_method"}, {"status": "canceled"}),
        ("checkout.session", {"status": "open"}, {"status": "complete"}),
        ("checkout.session", {"status": "open"}, {"status": "expired"}),
        (
            "checkout.session",
            {"status": "complete", "payment_status": "unpaid"},
            {"status": "complete", "payment_status": "paid"},
        ),
        ("refund", {"status": "pending"}, {"status": "succeeded"}),
        ("refund", {"status": "requires_action"}, {"status": "failed"}),
        ("refund", {"status": "pending"}, {"status": "canceled"}),
        ("dispute", {"status": "needs_response"}, {"status": "under_review"}),
        ("dispute", {"status": "warning_under_review"}, {"status": "warning_closed"}),
        ("invoice_payment", {"status": "open"}, {"status": "paid"}),
        ("charge", {"status": "pending"}, {"status": "succeeded"}),
        ("charge", {"captured": False}, {"captured": True}),
        ("charge", {"amount_refunded": 100, "refunded": True}, {"amount_refunded": 200}),
        (
            "charge",
            {"amount_refunded": 400, "captured": True},
            {"amount_refunded": 400, "captured": True, "refunded": True},
        ),
    ],
)
def test_stage_follows_the_lifecycle(
    obj: str, lower: dict[str, object], higher: dict[str, object]
) -> None:
    def stage(fields: dict[str, object]) -> int:
        return stamp_of(ev("x.updated", {"id": "x_1", "object": obj, **fields})).stage

    assert stage(lower) < stage(higher)


def test_objects_without_a_lifecycle_are_stage_zero() -> None:
    for obj in (se.customer("cus_1"), se.product("prod_1")):
        assert stamp_of(ev("x.updated", obj)).stage == 0


def test_a_subscription_is_incomplete_only_before_anything_else() -> None:
    """No subscription returns to incomplete: a same-second read that saw it incomplete
    never beats its activation (issue 19, point 1)."""

    def stage(status: str) -> int:
        sub = se.subscription("s", customer="c", items=[], status=status)
        return stamp_of(ev("customer.subscription.updated", sub)).stage

    assert stage("incomplete") < stage("active") == stage("past_due") == stage("trialing")


def test_a_row_keeps_what_its_event_changed() -> None:
    spec = rule_for("customer.subscription.updated")
    assert spec is not None
    sub = se.subscription("sub_1", customer="c", items=[("p", "prod")], status="active")
    e = ev(
        "customer.subscription.updated",
        sub,
        previous_attributes={"status": "trialing", "latest_invoice": "in_0"},
    )
    row = spec.apply(e, None)
    assert row is not None and row.previous == (("status", "trialing"),)
    assert spec.apply(ev("customer.subscription.updated", sub), None).previous == ()  # type: ignore[union-attr]
