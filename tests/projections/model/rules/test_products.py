"""product.* and price.* rules."""

from __future__ import annotations

from launcher.stripe import events as se
from projections.model.rows import PriceRow, ProductRow, Stamp
from projections.model.rules.products import price_snapshot, product_snapshot
from tests.support.parsed import ev


def test_product_snapshot_keeps_metadata_and_version() -> None:
    e = ev(
        "product.updated",
        se.product("prod_1", groups="action, animated", name="Pack"),
        created=9,
        partition=2,
        offset=7,
    )
    row = product_snapshot(e, None)
    assert row == ProductRow(
        "prod_1",
        "Pack",
        True,
        False,
        (("subscription_group", "action, animated"),),
        Stamp(9, 1, 0, 2, 7),
        e.id,
    )


def test_product_group_change_replaces_metadata() -> None:
    first = product_snapshot(ev("product.created", se.product("prod_1", groups="action")), None)
    second = product_snapshot(ev("product.updated", se.product("prod_1", groups="animated")), first)
    assert dict(second.metadata) == {"subscription_group": "animated"}


def test_product_deleted_with_either_payload() -> None:
    full = product_snapshot(ev("product.deleted", se.product("prod_1", groups="a")), None)
    assert full.deleted and full.stamp.rank == 2
    bare = product_snapshot(
        ev("product.deleted", {"id": "prod_1", "object": "product", "deleted": True}), None
    )
    assert bare.deleted and bare.metadata == ()


def test_price_rules() -> None:
    row = price_snapshot(ev("price.created", se.price("price_1", product="prod_1")), None)
    assert isinstance(row, PriceRow)
    assert (row.product, row.active, row.deleted, row.stamp.rank) == ("prod_1", True, False, 0)
    gone = price_snapshot(ev("price.deleted", se.price("price_1", product="prod_1")), row)
    assert gone.deleted
