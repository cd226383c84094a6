"""fold_batch: targets, duplicates, unknown types, poison, what changed for whom."""

from __future__ import annotations

import pytest
from fold_helpers import ev

from entitled.shell import stripe_events as se
from projections.errors import FoldError
from projections.fold import fold_batch, target
from projections.rows import SubscriptionRow


def test_target() -> None:
    assert target(
        ev("customer.subscription.updated", se.subscription("sub_1", customer="c", items=[]))
    ) == ("subscriptions", "sub_1")
    assert target(
        ev("charge.refund.updated", se.refund("re_1", charge="ch", payment_intent="pi", amount=1))
    ) == ("refunds", "re_1")
    assert target(ev("coupon.created", {"id": "co_1", "object": "coupon"})) is None


def test_batch_chains_rows_and_reports_customers_and_products() -> None:
    s1 = se.subscription("sub_1", customer="cus_1", items=[("p", "prod_1")], status="trialing")
    s2 = se.subscription("sub_1", customer="cus_1", items=[("p", "prod_1")], status="active")
    events = [
        ev("customer.subscription.created", s1, created=1),
        ev("customer.subscription.updated", s2, created=2),
        ev("product.updated", se.product("prod_1", groups="action"), created=3),
        ev("coupon.created", {"id": "co_1", "object": "coupon"}),
        ev("refund.created", se.refund("re_1", charge="ch", payment_intent="pi_9", amount=1)),
    ]
    res = fold_batch(events, {}, set())
    row = res.changed[("subscriptions", "sub_1")]
    assert isinstance(row, SubscriptionRow) and row.status == "active"
    assert res.customers == {"cus_1"} and res.products == {"prod_1"}
    assert res.payment_intents == {"pi_9"}
    assert res.unknown == 1 and res.skipped_duplicates == 0 and res.stale == 0
    assert res.last_event["cus_1"] is events[1]
    assert res.applied == [e.id for e in events]


def test_duplicates_in_seen_or_in_batch_are_skipped() -> None:
    e = ev("customer.created", se.customer("cus_1"))
    res = fold_batch([e, e], {}, set())
    assert res.skipped_duplicates == 1 and len(res.changed) == 1
    res = fold_batch([e], {}, {e.id})
    assert res.skipped_duplicates == 1 and res.changed == {} and res.customers == set()


def test_stale_event_against_current_rows() -> None:
    new = ev("customer.updated", se.customer("cus_1", name="new"), created=10)
    first = fold_batch([new], {}, set())
    old = ev("customer.updated", se.customer("cus_1", name="old"), created=5)
    res = fold_batch([old], first.changed, set())
    assert res.changed == {} and res.stale == 1


def test_a_raising_rule_becomes_fold_error_with_the_event() -> None:
    bad = ev("product.updated", se.customer("cus_1"))
    with pytest.raises(FoldError) as info:
        fold_batch([ev("customer.created", se.customer("cus_2")), bad], {}, set())
    assert info.value.event is bad
    assert isinstance(info.value.__cause__, TypeError)


def test_customer_moved_reports_both() -> None:
    a = se.charge("ch_1", customer="cus_a", payment_intent="pi")
    b = se.charge("ch_1", customer="cus_b", payment_intent="pi")
    first = fold_batch([ev("charge.succeeded", a, created=1)], {}, set())
    res = fold_batch([ev("charge.updated", b, created=2)], first.changed, set())
    assert res.customers == {"cus_a", "cus_b"}
