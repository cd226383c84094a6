"""The WebFlicks rules on plain rows."""

from __future__ import annotations

import pytest

from entitled.settings import Settings
from projections.entitlements import Entitlement, Policy, derive, split_groups
from projections.rows import (
    ChargeRow,
    ItemRow,
    ProductRow,
    PurchaseKind,
    PurchaseRow,
    RefundRow,
    Stamp,
    SubscriptionRow,
)

V = Stamp(1, 1, 0, 0, 0)
POLICY = Policy()


def product(
    pid: str, *, groups: str | None = None, movie: str | None = None, deleted: bool = False
) -> ProductRow:
    meta = {}
    if groups is not None:
        meta["subscription_group"] = groups
    if movie is not None:
        meta["movie_id"] = movie
    return ProductRow(pid, pid, True, deleted, tuple(sorted(meta.items())), V, "e")


def sub(
    *products: str, status: str = "active", cancel_at_period_end: bool = False, sid: str = "sub_1"
) -> SubscriptionRow:
    items = tuple(ItemRow(f"si_{p}", f"price_{p}", p, 1, 2) for p in products)
    return SubscriptionRow(sid, "cus_1", status, cancel_at_period_end, items, V, "e")


def purchase(
    pid: str,
    *,
    kind: PurchaseKind = "payment_intent",
    paid: bool = True,
    amount: int = 399,
    movie: str | None = None,
    products: tuple[str, ...] = (),
    pi: str | None = None,
) -> PurchaseRow:
    meta = (("movie_id", movie),) if movie else ()
    return PurchaseRow(
        pid,
        "cus_1",
        kind,
        paid,
        amount,
        meta,
        products,
        pi if pi is not None else (pid if kind == "payment_intent" else None),
        V,
        "e",
    )


def refund(rid: str, pi: str, amount: int, status: str = "succeeded") -> RefundRow:
    return RefundRow(rid, "ch_1", pi, amount, status, V, "e")


def groups_of(*subs: SubscriptionRow, products: dict[str, ProductRow]) -> tuple[str, ...]:
    return derive(subs, (), (), (), products, POLICY).groups


CATALOG = {
    "prod_action": product("prod_action", groups="action"),
    "prod_both": product("prod_both", groups=" action , animated,"),
    "prod_movie": product("prod_movie", movie="42"),
}


def test_split_groups() -> None:
    assert split_groups(" action , animated,") == ("action", "animated")
    assert split_groups(None) == () and split_groups("") == ()


@pytest.mark.parametrize(
    ("status", "entitles"),
    [
        ("active", True),
        ("trialing", True),
        ("past_due", True),
        ("canceled", False),
        ("unpaid", False),
        ("incomplete", False),
        ("incomplete_expired", False),
        ("paused", False),
    ],
)
def test_subscription_status(status: str, entitles: bool) -> None:
    got = groups_of(sub("prod_both", status=status), products=CATALOG)
    assert got == (("action", "animated") if entitles else ())


def test_cancel_at_period_end_keeps_entitling_until_status_changes() -> None:
    assert groups_of(sub("prod_action", cancel_at_period_end=True), products=CATALOG) == ("action",)
    assert (
        groups_of(
            sub("prod_action", cancel_at_period_end=True, status="canceled"), products=CATALOG
        )
        == ()
    )


def test_product_missing_then_present_and_deleted() -> None:
    s = sub("prod_late")
    assert groups_of(s, products=CATALOG) == ()
    late = {**CATALOG, "prod_late": product("prod_late", groups="animated")}
    assert groups_of(s, products=late) == ("animated",)
    gone = {**CATALOG, "prod_late": product("prod_late", groups="animated", deleted=True)}
    assert groups_of(s, products=gone) == ()


def test_group_change_of_a_product() -> None:
    s = sub("prod_action")
    changed = {**CATALOG, "prod_action": product("prod_action", groups="animated")}
    assert groups_of(s, products=CATALOG) == ("action",)
    assert groups_of(s, products=changed) == ("animated",)


def test_items_union_over_subscriptions_sorted_unique() -> None:
    got = groups_of(
        sub("prod_action", "prod_both"), sub("prod_action", sid="sub_2"), products=CATALOG
    )
    assert got == ("action", "animated")


def test_paid_purchases_name_movies() -> None:
    purchases = [
        purchase("pi_1", movie="7"),
        purchase("cs_1", kind="checkout_session", movie="8", pi="pi_2"),
        purchase("in_1", kind="invoice", products=("prod_movie", "prod_unknown"), pi="pi_3"),
        purchase("pi_4", movie="9", paid=False),
    ]
    got = derive((), purchases, (), (), CATALOG, POLICY)
    assert got == Entitlement((), ("42", "7", "8"))


def test_session_and_its_payment_intent_count_once() -> None:
    purchases = [
        purchase("cs_1", kind="checkout_session", movie="7", pi="pi_1"),
        purchase("pi_1", movie="7"),
    ]
    assert derive((), purchases, (), (), CATALOG, POLICY).movie_ids == ("7",)
    # fully refunded: both go
    refunds = [refund("re_1", "pi_1", 399)]
    assert derive((), purchases, (), refunds, CATALOG, POLICY).movie_ids == ()


def test_refunds_full_partial_and_by_charge() -> None:
    p = [purchase("pi_1", movie="7", amount=399)]
    assert derive((), p, (), [refund("re_1", "pi_1", 100)], {}, POLICY).movie_ids == ("7",)
    two = [refund("re_1", "pi_1", 100), refund("re_2", "pi_1", 299)]
    assert derive((), p, (), two, {}, POLICY).movie_ids == ()
    pending = [refund("re_1", "pi_1", 399, status="pending")]
    assert derive((), p, (), pending, {}, POLICY).movie_ids == ("7",)
    other = [refund("re_1", "pi_other", 399)]
    assert derive((), p, (), other, {}, POLICY).movie_ids == ("7",)
    charge = ChargeRow("ch_1", "cus_1", "pi_1", 399, 399, True, V, "e")
    assert derive((), p, [charge], (), {}, POLICY).movie_ids == ()
    partial = ChargeRow("ch_1", "cus_1", "pi_1", 399, 100, False, V, "e")
    assert derive((), p, [partial], (), {}, POLICY).movie_ids == ("7",)


def test_configurable_keys_and_statuses() -> None:
    settings = Settings(
        group_metadata_key="pkg", movie_metadata_key="film", entitling_statuses=("active",)
    )
    policy = Policy.from_settings(settings)
    prod = ProductRow("p", "p", True, False, (("pkg", "drama"),), V, "e")
    assert derive([sub("p")], (), (), (), {"p": prod}, policy).groups == ("drama",)
    assert derive([sub("p", status="trialing")], (), (), (), {"p": prod}, policy).groups == ()
    film = PurchaseRow("pi_1", "c", "payment_intent", True, 1, (("film", "3"),), (), "pi_1", V, "e")
    assert derive((), [film], (), (), {}, policy).movie_ids == ("3",)
