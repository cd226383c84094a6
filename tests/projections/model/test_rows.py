"""Rows survive the writer's JSON round trip; the version order is the documented one."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from projections.model.rows import (
    TABLES,
    ChargeRow,
    CustomerRow,
    DisputeRow,
    EntitlementSummaryRow,
    InvoicePaymentRow,
    ItemRow,
    PriceRow,
    ProductFeaturesRow,
    ProductRow,
    PurchaseRow,
    RefundRow,
    Row,
    Stamp,
    SubscriptionRow,
    coarse,
    customer_of,
    from_record,
    rank_of,
    refs_of,
)
from projections.model.settle import settle

V = Stamp(1700000000, 1, 0, 2, 3)
ROWS: list[Row] = [
    ProductRow(
        "prod_1",
        "Action",
        True,
        False,
        (("movie_id", "7"), ("subscription_group", "a")),
        V,
        "evt_1",
    ),
    ProductRow("prod_2", None, False, True, (), V, "evt_1"),
    PriceRow("price_1", "prod_1", True, False, V, "evt_1"),
    CustomerRow("cus_1", "a@b.c", None, False, V, "evt_1"),
    SubscriptionRow(
        "sub_1",
        "cus_1",
        "active",
        True,
        (ItemRow("si_1", "price_1", "prod_1", 1, 2), ItemRow("si_2", None, None, None, None)),
        V,
        "evt_1",
    ),
    SubscriptionRow("sub_2", "cus_1", "canceled", False, (), V, "evt_1"),
    PurchaseRow("in_1", "cus_1", "invoice", True, 999, (), ("prod_1", "prod_2"), "pi_1", V, "e"),
    PurchaseRow(
        "cs_1", "cus_1", "checkout_session", False, 399, (("movie_id", "7"),), (), None, V, "e"
    ),
    ChargeRow("ch_1", "cus_1", "pi_1", 399, 100, False, V, "evt_1"),
    RefundRow("re_1", "ch_1", "pi_1", 100, "succeeded", V, "evt_1"),
    RefundRow("re_2", "ch_1", "pi_1", 100, "pending", V, "evt_1", customer="cus_1"),
    DisputeRow("dp_1", "ch_1", "pi_1", "lost", 399, V, "evt_1"),
    InvoicePaymentRow("inpay_1", "in_1", "pi_1", "paid", V, "evt_1"),
    # a row that remembers what its event changed, and a same-key rival
    SubscriptionRow(
        "sub_3",
        "cus_1",
        "active",
        False,
        (ItemRow("si_1", "price_1", "prod_1", 1, 2, quantity=3),),
        V,
        "evt_2",
        previous=(
            ("items", (ItemRow("si_0", None, "prod_0", None, None),)),
            ("status", "trialing"),
        ),
        rivals=(SubscriptionRow("sub_3", "cus_1", "trialing", False, (), V, "evt_1"),),
    ),
    ProductFeaturesRow("prod_1", ("group:action", "movie:7"), V, "evt_1"),
    EntitlementSummaryRow("cus_1", "cus_1", ("group:action",), True, V, "evt_1"),
    ProductRow("prod_3", None, True, False, (), V, "e", previous=(("metadata", (("a", "b"),)),)),
]


def test_every_row_round_trips_through_json() -> None:
    assert {type(r).table for r in ROWS} == set(TABLES)
    for row in ROWS:
        rec = json.loads(json.dumps(row.to_record()))
        assert from_record(type(row).table, rec) == row
        assert rec["stamp"] == {
            "created": 1700000000,
            "rank": 1,
            "stage": 0,
            "partition": 2,
            "offset": 3,
        }


def test_records_are_plain_json_with_metadata_as_object() -> None:
    rec = ROWS[0].to_record()
    assert rec["metadata"] == {"movie_id": "7", "subscription_group": "a"}
    assert ROWS[1].to_record()["metadata"] == {}
    assert ROWS[4].to_record()["items"][0] == {
        "id": "si_1",
        "price": "price_1",
        "product": "prod_1",
        "current_period_start": 1,
        "current_period_end": 2,
        "quantity": 1,
    }
    assert ROWS[-1].to_record()["previous"] == {"metadata": {"a": "b"}}


def test_records_written_before_a_field_existed_still_load() -> None:
    rec = ROWS[4].to_record()
    del rec["previous"], rec["rivals"], rec["stamp"]["stage"]
    for item in rec["items"]:
        del item["quantity"]
    with pytest.raises(KeyError):
        from_record("subscriptions", rec)  # stage has no default: a Stamp always has one
    rec["stamp"]["stage"] = 0
    assert from_record("subscriptions", rec) == ROWS[4]
    rec = ROWS[13].to_record()
    rec["previous"]["plan"] = "a field since removed"
    assert from_record("subscriptions", rec) == ROWS[13]


def test_rank_and_version_order() -> None:
    assert rank_of("customer.subscription.created") == 0
    assert rank_of("customer.subscription.updated") == 1
    assert rank_of("customer.subscription.deleted") == 2
    assert rank_of("product.deleted") == 2
    assert rank_of("invoice.paid") == 1
    # time first, then terminal > update > create, then log order
    assert Stamp(2, 0, 0, 0, 0) > Stamp(1, 2, 0, 9, 9)
    assert Stamp(1, 2, 0, 0, 0) > Stamp(1, 1, 0, 0, 5) > Stamp(1, 0, 0, 7, 7)
    assert Stamp(1, 1, 0, 0, 6) > Stamp(1, 1, 0, 0, 5)


def test_customer_and_refs() -> None:
    assert customer_of(ROWS[3]) == "cus_1"
    assert customer_of(ROWS[0]) is None
    assert customer_of(ROWS[4]) == "cus_1"
    assert customer_of(ROWS[9]) is None
    assert refs_of(ROWS[4]) == ("prod_1",)
    assert refs_of(ROWS[6]) == ("pi_1", "prod_1", "prod_2")
    assert refs_of(ROWS[9]) == ("ch_1", "pi_1")
    assert refs_of(ROWS[3]) == ()
    assert customer_of(ROWS[11]) is None and refs_of(ROWS[11]) == ("ch_1", "pi_1")
    assert customer_of(ROWS[12]) is None and refs_of(ROWS[12]) == ("in_1", "pi_1")


def _sub(event_id: str, status: str, previous: str | None, offset: int) -> SubscriptionRow:
    return SubscriptionRow(
        "sub_1",
        "cus_1",
        status,
        False,
        (),
        Stamp(10, 1, 0, 0, offset),
        event_id,
        previous=(("status", previous),) if previous else (),
    )


def _fold_rows(rows: list[SubscriptionRow]) -> tuple[Row | None, int]:
    current: Row | None = None
    ties = 0
    for row in rows:
        settled = settle(current, row)
        ties += settled.tie
        current = settled.row or current
    return current, ties


def test_settle_by_coarse_key_never_prefers_a_lower_one() -> None:
    old = _sub("e1", "active", None, 9)
    new = dataclasses.replace(_sub("e2", "past_due", None, 1), stamp=Stamp(11, 0, 0, 0, 1))
    assert settle(old, new).row == new
    assert settle(new, old).row is None
    tomb = dataclasses.replace(_sub("e3", "canceled", None, 0), stamp=Stamp(5, 2, 0, 0, 0))
    assert settle(new, tomb).row == tomb and settle(tomb, new).row is None
    staged = dataclasses.replace(old, event_id="e4", stamp=Stamp(10, 1, 1, 0, 0))
    assert settle(old, staged).row == staged and settle(staged, old).row is None
    assert coarse(staged.stamp) > coarse(old.stamp)


def test_a_chain_of_three_ends_the_same_in_any_order() -> None:
    a = _sub("e_a", "trialing", "incomplete", 1)
    b = _sub("e_b", "active", "trialing", 2)
    c = _sub("e_c", "past_due", "active", 3)
    for order in itertools.permutations([a, b, c]):
        delivered = [
            dataclasses.replace(r, stamp=Stamp(10, 1, 0, 0, n)) for n, r in enumerate(order)
        ]
        got, ties = _fold_rows(delivered)
        assert isinstance(got, SubscriptionRow)
        assert (got.status, got.event_id) == ("past_due", "e_c")
        assert [r.event_id for r in got.rivals] == ["e_a", "e_b"]
        # C before B: until B arrives, nothing links A and C (a tie, settled later by B)
        assert ties == (order.index(c) < order.index(b) and order.index(a) < order.index(b))


def test_a_change_undone_in_the_same_second() -> None:
    # active -> past_due -> active: the two "active" snapshots are one state; the chain ends there
    a = _sub("e_a", "active", "trialing", 1)
    b = _sub("e_b", "past_due", "active", 2)
    c = _sub("e_c", "active", "past_due", 3)
    for order in itertools.permutations([a, b, c]):
        got, _ties = _fold_rows(list(order))
        assert isinstance(got, SubscriptionRow) and (got.status, got.event_id) == ("active", "e_c")
    assert _fold_rows([a, b, c])[1] == 0


def test_the_same_state_twice_is_no_tie_and_keeps_one_event() -> None:
    paid = _sub("e_2", "active", "trialing", 1)
    again = _sub("e_1", "active", "trialing", 2)
    for order in ([paid, again], [again, paid]):
        got, ties = _fold_rows(order)
        assert got is not None and (got.event_id, ties) == ("e_1", 0)


def test_only_log_order_left_is_a_tie() -> None:
    x = _sub("e_x", "active", None, 1)
    y = _sub("e_y", "past_due", None, 2)
    got, ties = _fold_rows([x, y])
    assert got is not None and got.event_id == "e_y" and ties == 1
    got, ties = _fold_rows([y, x])
    assert got is not None and got.event_id == "e_y" and ties == 1  # the later log position
    assert settle(got, x).row is None  # a rival folded again changes nothing


def test_rivals_are_bounded() -> None:
    rows = [_sub(f"e_{n:03d}", f"s{n}", None, n) for n in range(40)]
    got, ties = _fold_rows(rows)
    assert got is not None and len(got.rivals) == 15 and got.event_id == "e_039"
    assert ties == 39
