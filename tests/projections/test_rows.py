"""Rows survive the writer's JSON round trip; the version order is the documented one."""

from __future__ import annotations

import json

from projections.rows import (
    TABLES,
    ChargeRow,
    CustomerRow,
    ItemRow,
    PriceRow,
    ProductRow,
    PurchaseRow,
    RefundRow,
    Row,
    Stamp,
    SubscriptionRow,
    customer_of,
    from_record,
    rank_of,
    refs_of,
)

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
    }


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
