"""fold_batch: targets, duplicates, unknown types, poison, what changed for whom."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.stripe import events as se
from projections.errors import FoldError
from projections.model.events import parse
from projections.model.fold import fold_batch, target
from projections.model.rows import CustomerRow, SubscriptionRow
from projections.model.rules import rule_for
from tests.support.examples import examples
from tests.support.parsed import ev


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
    assert res.links == {"ch", "pi_9"}
    assert res.unknown == 1 and res.skipped_duplicates == 0 and res.stale == 0
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


def test_events_without_stored_state_are_ignored_and_counted_by_type() -> None:
    preview = se.invoice("in_1", customer="cus_1", lines=[("p", "prod")], status="draft")
    del preview["id"]
    no_object = parse(
        b'{"id": "evt_n", "type": "customer.updated", "created": 1, "data": {}}',
        partition=0,
        offset=1,
    )
    thin = parse(
        b'{"id": "evt_t", "object": "v2.core.event", "type": "v1.customer.subscription.updated",'
        b' "created": "2024-09-17T06:20:52.246Z", "related_object": {"id": "sub_1"}}',
        partition=0,
        offset=2,
    )
    events = [
        ev("invoice.upcoming", preview),
        ev("invoice.upcoming", preview),
        ev("invoice.paid", preview),
        no_object,
        thin,
        ev("coupon.created", {"id": "co_1", "object": "coupon"}),
        ev("customer.subscription.updated", se.subscription("sub_1", customer="c", items=[])),
    ]
    res = fold_batch(events, {}, set())
    assert res.ignored == Counter(
        {
            "invoice.upcoming": 2,
            "invoice.paid": 1,
            "customer.updated": 1,
            "v1.customer.subscription.updated": 1,
        }
    )
    assert res.unknown == 1 and list(res.changed) == [("subscriptions", "sub_1")]
    assert all(target(e) is None for e in events[:-1])
    assert len(res.applied) == len(events)


def test_tolerant_views_are_not_poison_but_a_raising_rule_is() -> None:
    odd = {"id": "sub_1", "object": "subscription", "status": 1, "items": "x", "customer": []}
    res = fold_batch([ev("customer.subscription.updated", odd)], {}, set())
    row = res.changed[("subscriptions", "sub_1")]
    assert isinstance(row, SubscriptionRow) and (row.status, row.items, row.customer) == (
        "",
        (),
        None,
    )


def test_links_of_rows_without_customer() -> None:
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_1"}
    payment = {
        "id": "inpay_1",
        "object": "invoice_payment",
        "invoice": "in_1",
        "payment": {"payment_intent": "pi_2"},
    }
    charge = se.charge("ch_2", customer="cus_1", payment_intent="pi_3")
    guest = se.charge("ch_3", customer="cus_1", payment_intent="pi_4")
    guest["customer"] = None
    res = fold_batch(
        [
            ev("charge.dispute.created", dispute),
            ev("invoice_payment.paid", payment),
            ev("charge.succeeded", charge),
            ev("charge.succeeded", guest),
        ],
        {},
        set(),
    )
    assert res.links == {"ch_1", "pi_1", "in_1", "pi_2", "pi_4"}
    assert res.customers == {"cus_1"}


def test_same_second_ties_are_counted() -> None:
    a = se.customer("cus_1", name="A")
    b = se.customer("cus_1", name="B")
    res = fold_batch(
        [ev("customer.updated", a, created=5), ev("customer.updated", b, created=5)], {}, set()
    )
    assert res.ties == 1 and res.stale == 0
    chained = fold_batch(
        [
            ev("customer.updated", b, created=5, previous_attributes={"name": "A"}),
            ev("customer.updated", a, created=5, previous_attributes={"name": None}),
        ],
        {},
        set(),
    )
    row = chained.changed[("customers", "cus_1")]
    assert chained.ties == 0 and isinstance(row, CustomerRow) and row.name == "B"


# What each event family carries in `data.object.object`.
_KINDS = {
    "product.updated": "product",
    "price.updated": "price",
    "customer.updated": "customer",
    "customer.subscription.updated": "subscription",
    "checkout.session.completed": "checkout.session",
    "payment_intent.succeeded": "payment_intent",
    "invoice.paid": "invoice",
    "charge.refunded": "charge",
    "refund.updated": "refund",
    "charge.dispute.closed": "dispute",
    "invoice_payment.paid": "invoice_payment",
}
_FIELDS = (
    "customer", "status", "items", "metadata", "lines", "payments", "payment", "line_items",
    "amount", "amount_paid", "amount_total", "amount_refunded", "refunded", "captured", "deleted",
    "active", "name", "email", "product", "price", "charge", "payment_intent", "invoice", "mode",
    "payment_status", "cancel_at_period_end", "parent", "subscription", "plan", "quantity",
    "current_period_start", "current_period_end", "data", "pricing",
)  # fmt: skip
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_type=st.sampled_from(sorted(_KINDS)),
    fields=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=8),
    previous=st.none() | st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
    api_version=st.sampled_from([se.CURRENT_API_VERSION, se.LEGACY_API_VERSION, None]),
)
def test_no_object_shape_makes_an_event_poison(
    event_type: str,
    fields: dict[str, Any],
    previous: dict[str, Any] | None,
    api_version: str | None,
) -> None:
    """Any value of any field a view reads, in either API shape, folds without error."""
    obj = {**fields, "id": "obj_1", "object": _KINDS[event_type]}
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    doc = {
        "id": "evt_1",
        "type": event_type,
        "created": 1,
        "api_version": api_version,
        "data": data,
    }
    event = parse(orjson.dumps(doc), partition=0, offset=0)
    res = fold_batch([event], {}, set())
    assert list(res.changed) == [(rule_for(event_type).table, "obj_1")]  # type: ignore[union-attr]
