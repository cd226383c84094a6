"""Stripe Entitlements rules: a product's features snapshot and a customer's summary."""

from __future__ import annotations

import pytest

from launcher.stripe import events as se
from launcher.stripe import features as sf
from projections.model.events import StripeEvent, parse
from projections.model.fold import fold_batch
from projections.model.rows import EntitlementSummaryRow, ProductFeaturesRow
from projections.model.rules.features import product_features_snapshot, summary_snapshot
from tests.support.parsed import ev


def _summary_event(
    keys: list[str], *, created: int = 100, has_more: bool = False, offset: int = 0
) -> StripeEvent:
    raw = se.encode(sf.summary_event("cus_1", keys, created=created, has_more=has_more))
    return parse(raw, partition=0, offset=offset)


@pytest.mark.parametrize("count", [0, 10, 11, 250])
def test_summary_keeps_every_key_listed_and_has_more(count: int) -> None:
    keys = [f"group:g{i:03}" for i in range(count)]
    row = summary_snapshot(_summary_event(keys, has_more=count > 10), None)
    assert isinstance(row, EntitlementSummaryRow)
    assert (row.id, row.customer) == ("cus_1", "cus_1")
    assert row.lookup_keys == tuple(sorted(keys)) and len(row.lookup_keys) == count
    assert row.has_more is (count > 10)


def test_summary_is_the_whole_truth_and_an_older_one_loses() -> None:
    newer = _summary_event(["group:action"], created=200, offset=1)
    older = _summary_event(["group:action", "group:drama"], created=100, offset=2)
    emptied = _summary_event([], created=300, offset=3)
    # delivered newest first: the older one is stale
    result = fold_batch([newer, older], {}, set())
    assert result.stale == 1
    assert result.changed[("entitlement_summaries", "cus_1")].lookup_keys == ("group:action",)  # type: ignore[union-attr]
    assert result.customers == {"cus_1"}
    # a later summary with nothing replaces, it does not merge
    result = fold_batch([newer, emptied], {}, set())
    assert result.changed[("entitlement_summaries", "cus_1")].lookup_keys == ()  # type: ignore[union-attr]


def test_product_features_snapshot_drops_archived_features() -> None:
    raw = se.encode(
        sf.product_features_snapshot(
            "prod_1", ["group:action", "movie:7"], created=50, archived=["group:old"]
        )
    )
    e = parse(raw, partition=0, offset=0)
    row = product_features_snapshot(e, None)
    assert isinstance(row, ProductFeaturesRow)
    assert (row.id, row.lookup_keys) == ("prod_1", ("group:action", "movie:7"))


def test_a_features_change_reaches_subscribers_through_links_and_a_same_list_does_not() -> None:
    first = parse(
        se.encode(sf.product_features_snapshot("prod_1", ["group:action"], created=50)),
        partition=0,
        offset=0,
    )
    result = fold_batch([first], {}, set())
    assert "prod_1" in result.links and result.customers == set()
    row = result.changed[("product_features", "prod_1")]
    assert isinstance(row, ProductFeaturesRow)
    same = parse(
        se.encode(sf.product_features_snapshot("prod_1", ["group:action"], created=60)),
        partition=0,
        offset=1,
    )
    assert same.id == first.id  # the same list gives the same event id: deduplicated
    again = ev(
        "product.features.snapshot",
        {
            "object": "product_features",
            "id": "prod_1",
            "data": [sf.product_feature("group:action")],
        },
        created=70,
    )
    result = fold_batch([again], {("product_features", "prod_1"): row}, set())
    assert result.links == set()
    removed = ev(
        "product.features.snapshot",
        {"object": "product_features", "id": "prod_1", "data": []},
        created=80,
    )
    result = fold_batch([removed], {("product_features", "prod_1"): row}, set())
    assert result.links == {"prod_1"}
    assert result.changed[("product_features", "prod_1")].lookup_keys == ()  # type: ignore[union-attr]
