"""The reasons behind `derive`: every source of every group and movie, and the same sets."""

from __future__ import annotations

import pytest

from projections.model.entitlements import Policy, derive
from projections.model.grants import grants
from projections.model.rows import (
    EntitlementSummaryRow,
    ProductFeaturesRow,
    Stamp,
)
from tests.projections.model.test_entitlements import (
    CATALOG,
    POLICY,
    facts,
    product,
    purchase,
    refund,
    sub,
)

V = Stamp(1, 1, 0, 0, 0)


def _sets(g: dict[str, dict[str, list[object]]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(sorted(g["groups"])), tuple(sorted(g["movies"]))


def test_a_subscription_item_grants_its_products_groups() -> None:
    f = facts(subscriptions=[sub("prod_action", "prod_both")], products=CATALOG)
    g = grants(f, POLICY)
    assert _sets(g) == (("action", "animated"), ())
    assert [s["product"] for s in g["groups"]["action"]] == ["prod_action", "prod_both"]
    first = g["groups"]["action"][0]
    assert first == {
        "source": "metadata",
        "subscription": "sub_1",
        "status": "active",
        "item": "si_prod_action",
        "product": "prod_action",
        "metadata_key": "subscription_group",
        "event_id": "e",
        "product_event_id": "e",
    }


def test_a_cancelled_subscription_or_refunded_purchase_grants_nothing() -> None:
    f = facts(
        subscriptions=[sub("prod_action", status="canceled")],
        purchases=[purchase("pi_1", movie="7")],
        refunds=[refund("re_1", "pi_1", 399)],
        products=CATALOG,
    )
    assert grants(f, POLICY) == {"groups": {}, "movies": {}}


def test_a_purchase_names_its_movie_through_metadata_or_product() -> None:
    f = facts(
        purchases=[purchase("pi_1", movie="7"), purchase("pi_2", products=("prod_movie",))],
        products=CATALOG,
    )
    g = grants(f, POLICY)
    assert _sets(g) == ((), ("42", "7"))
    assert g["movies"]["7"][0]["purchase"] == "pi_1"
    assert g["movies"]["42"][0] | {"product": "prod_movie"} == g["movies"]["42"][0]


def test_features_and_summary_are_sources_too() -> None:
    features = {"prod_plain": ProductFeaturesRow("prod_plain", ("group:scifi",), V, "ef")}
    summary = EntitlementSummaryRow("cus_1", "cus_1", ("movie:9",), False, V, "es")
    f = facts(
        subscriptions=[sub("prod_plain")],
        products={"prod_plain": product("prod_plain")},
        features=features,
        summary=summary,
    )
    g = grants(f, POLICY)
    assert _sets(g) == (("scifi",), ("9",))
    [feature] = g["groups"]["scifi"]
    assert (feature["source"], feature["lookup_key"], feature["feature_event_id"]) == (
        "feature",
        "group:scifi",
        "ef",
    )
    assert g["movies"]["9"] == [{"source": "summary", "lookup_key": "movie:9", "event_id": "es"}]


@pytest.mark.parametrize("sources", [("metadata",), ("features",), ("summary",), ()])
def test_the_sets_are_derives_under_any_policy(sources: tuple[str, ...]) -> None:
    features = {"prod_action": ProductFeaturesRow("prod_action", ("movie:5",), V, "ef")}
    summary = EntitlementSummaryRow("cus_1", "cus_1", ("group:comedy",), False, V, "es")
    policy = Policy(grants=sources)
    f = facts(
        subscriptions=[sub("prod_action", "prod_both")],
        purchases=[purchase("pi_1", movie="7")],
        products=CATALOG,
        features=features,
        summary=summary,
    )
    held = derive(f, policy)
    assert _sets(grants(f, policy)) == (held.groups, held.movie_ids)
