"""Grant sources on plain rows: product metadata, features of subscribed products, Stripe's
summary, alone and combined (ENTITLED_GRANTS)."""

from __future__ import annotations

import dataclasses

import pytest

from entitled.settings import Settings
from projections.model.entitlements import Facts, Policy, derive, feature_keys, grants_of_keys
from projections.model.rows import (
    CustomerRow,
    EntitlementSummaryRow,
    ItemRow,
    ProductFeaturesRow,
    ProductRow,
    Stamp,
    SubscriptionRow,
)

V = Stamp(1, 1, 0, 0, 0)


def _product(pid: str, group: str | None = None) -> ProductRow:
    meta = (("subscription_group", group),) if group else ()
    return ProductRow(pid, pid, True, False, meta, V, "evt_p")


def _features(pid: str, *keys: str) -> ProductFeaturesRow:
    return ProductFeaturesRow(pid, tuple(sorted(keys)), V, "evt_f")


def _sub(*products: str, status: str = "active", quantity: int = 1) -> SubscriptionRow:
    items = tuple(ItemRow(f"si_{p}", f"price_{p}", p, quantity=quantity) for p in products)
    return SubscriptionRow("sub_1", "cus_1", status, False, items, V, "evt_s")


def _summary(*keys: str) -> EntitlementSummaryRow:
    return EntitlementSummaryRow("cus_1", "cus_1", tuple(sorted(keys)), False, V, "evt_e")


# prod_meta sells `drama` by metadata, prod_feat sells `action` and movie 7 by features;
# Stripe's summary says `family`.
FACTS = Facts(
    subscriptions=(_sub("prod_meta", "prod_feat"),),
    products={"prod_meta": _product("prod_meta", "drama"), "prod_feat": _product("prod_feat")},
    features={"prod_feat": _features("prod_feat", "group:action", "movie:7", "beta-ui")},
    summary=_summary("group:family"),
)


@pytest.mark.parametrize(
    ("grants", "groups", "movies"),
    [
        (("metadata",), ("drama",), ()),
        (("features",), ("action",), ("7",)),
        (("summary",), ("family",), ()),
        (("metadata", "features"), ("action", "drama"), ("7",)),
        (("features", "summary"), ("action", "family"), ("7",)),
        (("metadata", "features", "summary"), ("action", "drama", "family"), ("7",)),
    ],
)
def test_each_source_alone_and_combined(
    grants: tuple[str, ...], groups: tuple[str, ...], movies: tuple[str, ...]
) -> None:
    ent = derive(FACTS, Policy(grants=grants))
    assert (ent.groups, ent.movie_ids) == (groups, movies)


def test_feature_keys_say_where_each_comes_from() -> None:
    keys = feature_keys(FACTS, Policy())
    assert keys == {
        "beta-ui": [("sub_1", "prod_feat")],
        "group:action": [("sub_1", "prod_feat")],
        "movie:7": [("sub_1", "prod_feat")],
    }


def test_a_feature_added_to_and_removed_from_a_product_changes_its_subscribers() -> None:
    policy = Policy(grants=("features",))
    facts = dataclasses.replace(FACTS, features={})
    assert derive(facts, policy).groups == ()
    added = dataclasses.replace(facts, features={"prod_meta": _features("prod_meta", "group:x")})
    assert derive(added, policy).groups == ("x",)
    removed = dataclasses.replace(added, features={"prod_meta": _features("prod_meta")})
    assert derive(removed, policy).groups == ()


@pytest.mark.parametrize(
    "facts",
    [
        dataclasses.replace(FACTS, subscriptions=(_sub("prod_feat", status="canceled"),)),
        dataclasses.replace(FACTS, subscriptions=(_sub("prod_feat", quantity=0),)),
        dataclasses.replace(
            FACTS,
            products={"prod_feat": dataclasses.replace(_product("prod_feat"), deleted=True)},
        ),
    ],
    ids=["not-entitling", "quantity-0", "product-deleted"],
)
def test_features_grant_only_through_an_entitling_item(facts: Facts) -> None:
    assert feature_keys(facts, Policy()) == {}
    assert derive(facts, Policy(grants=("features",))).groups == ()


def test_a_deleted_customer_holds_nothing_whatever_the_summary_says() -> None:
    gone = CustomerRow("cus_1", None, None, True, V, "evt_c")
    facts = dataclasses.replace(FACTS, customer=gone)
    assert derive(facts, Policy()).groups == ()


def test_prefixes_are_configurable_and_other_keys_grant_nothing() -> None:
    policy = Policy(group_prefix="pkg.", movie_prefix="film.")
    assert grants_of_keys(["pkg.action", "film.9", "group:x", "pkg.", "other"], policy) == (
        {"action"},
        {"9"},
    )


def test_grants_setting() -> None:
    assert Settings.from_env({}).grants == ("metadata", "features", "summary")
    assert Settings.from_env({"ENTITLED_GRANTS": "summary, features"}).grants == (
        "features",
        "summary",
    )
    with pytest.raises(ValueError, match="unknown"):
        Settings.from_env({"ENTITLED_GRANTS": "metadata,magic"})
    policy = Policy.from_settings(Settings.from_env({"ENTITLED_GRANTS": "features"}))
    assert policy.grants == ("features",) and policy.group_prefix == "group:"
