"""The WebFlicks rules on plain rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

from entitled.settings import Settings
from projections.model.entitlements import (
    Entitlement,
    Facts,
    Policy,
    derive,
    gather,
    link_keys,
    product_ids,
    split_groups,
)
from projections.model.rows import (
    ChargeRow,
    CustomerRow,
    DisputeRow,
    InvoicePaymentRow,
    ItemRow,
    ProductRow,
    PurchaseKind,
    PurchaseRow,
    RefundRow,
    Row,
    Stamp,
    SubscriptionRow,
)

V = Stamp(1, 1, 0, 0, 0)
POLICY = Policy()


def facts(
    *,
    subscriptions: Iterable[SubscriptionRow] = (),
    purchases: Iterable[PurchaseRow] = (),
    charges: Iterable[ChargeRow] = (),
    refunds: Iterable[RefundRow] = (),
    products: dict[str, ProductRow] | None = None,
    **more: Any,
) -> Facts:
    return Facts(
        subscriptions=tuple(subscriptions),
        purchases=tuple(purchases),
        charges=tuple(charges),
        refunds=tuple(refunds),
        products=products or {},
        **more,
    )


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
    return derive(facts(subscriptions=subs, products=products), POLICY).groups


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
    got = derive(facts(purchases=purchases, products=CATALOG), POLICY)
    assert got == Entitlement((), ("42", "7", "8"))


def test_session_and_its_payment_intent_count_once() -> None:
    purchases = [
        purchase("cs_1", kind="checkout_session", movie="7", pi="pi_1"),
        purchase("pi_1", movie="7"),
    ]
    assert derive(facts(purchases=purchases, products=CATALOG), POLICY).movie_ids == ("7",)
    # fully refunded: both go
    refunds = [refund("re_1", "pi_1", 399)]
    assert (
        derive(facts(purchases=purchases, refunds=refunds, products=CATALOG), POLICY).movie_ids
        == ()
    )


def test_refunds_full_partial_and_by_charge() -> None:
    p = [purchase("pi_1", movie="7", amount=399)]
    assert derive(facts(purchases=p, refunds=[refund("re_1", "pi_1", 100)]), POLICY).movie_ids == (
        "7",
    )
    two = [refund("re_1", "pi_1", 100), refund("re_2", "pi_1", 299)]
    assert derive(facts(purchases=p, refunds=two), POLICY).movie_ids == ()
    pending = [refund("re_1", "pi_1", 399, status="pending")]
    assert derive(facts(purchases=p, refunds=pending), POLICY).movie_ids == ("7",)
    other = [refund("re_1", "pi_other", 399)]
    assert derive(facts(purchases=p, refunds=other), POLICY).movie_ids == ("7",)
    charge = ChargeRow("ch_1", "cus_1", "pi_1", 399, 399, True, V, "e")
    assert derive(facts(purchases=p, charges=[charge]), POLICY).movie_ids == ()
    partial = ChargeRow("ch_1", "cus_1", "pi_1", 399, 100, False, V, "e")
    assert derive(facts(purchases=p, charges=[partial]), POLICY).movie_ids == ("7",)


def test_configurable_keys_and_statuses() -> None:
    settings = Settings(
        group_metadata_key="pkg", movie_metadata_key="film", entitling_statuses=("active",)
    )
    policy = Policy.from_settings(settings)
    prod = ProductRow("p", "p", True, False, (("pkg", "drama"),), V, "e")
    assert derive(facts(subscriptions=[sub("p")], products={"p": prod}), policy).groups == (
        "drama",
    )
    assert (
        derive(
            facts(subscriptions=[sub("p", status="trialing")], products={"p": prod}), policy
        ).groups
        == ()
    )
    film = PurchaseRow("pi_1", "c", "payment_intent", True, 1, (("film", "3"),), (), "pi_1", V, "e")
    assert derive(facts(purchases=[film]), policy).movie_ids == ("3",)


def charge(
    cid: str, pi: str, *, refunded: bool = False, customer: str | None = "cus_1"
) -> ChargeRow:
    return ChargeRow(cid, customer, pi, 399, 399 if refunded else 0, refunded, V, "e")


def dispute(status: str, *, charge: str | None = "ch_1", pi: str | None = None) -> DisputeRow:
    return DisputeRow("dp_1", charge, pi, status, 399, V, "e")


@pytest.mark.parametrize(
    ("status", "keeps"),
    [
        ("lost", False),
        ("won", True),
        ("warning_closed", True),
        ("needs_response", True),
        ("under_review", True),
    ],
)
def test_a_lost_dispute_revokes_the_purchase(status: str, keeps: bool) -> None:
    p = [purchase("pi_1", movie="7")]
    by_charge = facts(purchases=p, charges=[charge("ch_1", "pi_1")], disputes=(dispute(status),))
    assert derive(by_charge, POLICY).movie_ids == (("7",) if keeps else ())
    by_intent = facts(purchases=p, disputes=(dispute(status, charge=None, pi="pi_1"),))
    assert derive(by_intent, POLICY).movie_ids == (("7",) if keeps else ())
    elsewhere = facts(purchases=p, disputes=(dispute(status, charge="ch_9", pi="pi_9"),))
    assert derive(elsewhere, POLICY).movie_ids == ("7",)


def test_quantity_zero_grants_nothing() -> None:
    zero = SubscriptionRow(
        "sub_1",
        "cus_1",
        "active",
        False,
        (ItemRow("si", "price", "prod_action", quantity=0),),
        V,
        "e",
    )
    assert groups_of(zero, products=CATALOG) == ()
    one = dataclasses.replace(zero, items=(ItemRow("si", "price", "prod_action"),))
    assert groups_of(one, products=CATALOG) == ("action",)


def test_a_deleted_customer_holds_nothing() -> None:
    alive = CustomerRow("cus_1", None, None, False, V, "e")
    held = facts(
        subscriptions=[sub("prod_action")],
        purchases=[purchase("pi_1", movie="7")],
        products=CATALOG,
    )
    assert derive(dataclasses.replace(held, customer=alive), POLICY) == Entitlement(
        ("action",), ("7",)
    )
    gone = dataclasses.replace(alive, deleted=True)
    assert derive(dataclasses.replace(held, customer=gone), POLICY) == Entitlement((), ())


def test_invoice_purchase_is_revoked_through_its_invoice_payments() -> None:
    inv = purchase("in_1", kind="invoice", products=("prod_movie",), amount=399)
    link = InvoicePaymentRow("inpay_1", "in_1", "pi_7", "paid", V, "e")
    base = facts(purchases=[inv], products=CATALOG, invoice_payments=(link,))
    assert derive(base, POLICY).movie_ids == ("42",)
    refunded = dataclasses.replace(base, refunds=(refund("re_1", "pi_7", 399),))
    assert derive(refunded, POLICY).movie_ids == ()
    lost = dataclasses.replace(base, disputes=(dispute("lost", charge=None, pi="pi_7"),))
    assert derive(lost, POLICY).movie_ids == ()
    other = InvoicePaymentRow("inpay_2", "in_2", "pi_7", "paid", V, "e")
    unlinked = dataclasses.replace(refunded, invoice_payments=(other,))
    assert derive(unlinked, POLICY).movie_ids == ("42",)


def test_gather_attaches_link_rows_through_the_customers_ids() -> None:
    inv = purchase("in_1", kind="invoice", products=("prod_movie",))
    pi = purchase("pi_1", movie="7")
    other = dataclasses.replace(purchase("pi_2", movie="8"), customer="cus_2")
    rows: list[Row] = [
        CustomerRow("cus_1", None, None, False, V, "e"),
        sub("prod_action"),
        inv,
        pi,
        other,
        InvoicePaymentRow("inpay_1", "in_1", "pi_7", "paid", V, "e"),
        charge("ch_7", "pi_7", customer=None),  # a charge that names no customer
        refund("re_1", "pi_1", 100),
        DisputeRow("dp_7", "ch_7", None, "lost", 399, V, "e"),
        refund("re_2", "pi_2", 399),
        DisputeRow("dp_x", "ch_x", "pi_x", "lost", 399, V, "e"),
    ]
    assert link_keys(rows[:5]) == {"in_1", "pi_1", "pi_2"}
    assert product_ids(rows) == {"prod_action", "prod_movie"}
    got = gather(["cus_1", "cus_2", "cus_3"], rows, CATALOG)
    one = got["cus_1"]
    assert one.customer == rows[0] and one.subscriptions == (rows[1],)
    assert one.purchases == (inv, pi) and [r.id for r in one.invoice_payments] == ["inpay_1"]
    assert [r.id for r in one.charges] == ["ch_7"] and [r.id for r in one.refunds] == ["re_1"]
    assert [r.id for r in one.disputes] == ["dp_7"]
    assert derive(one, POLICY) == Entitlement(("action",), ("7",))  # the invoice's dispute was lost
    assert [r.id for r in got["cus_2"].refunds] == ["re_2"] and derive(
        got["cus_2"], POLICY
    ).movie_ids == ()
    assert got["cus_3"] == Facts(products=CATALOG)
    assert {r.id for r in one.rows()} == {
        "cus_1",
        "sub_1",
        "in_1",
        "pi_1",
        "inpay_1",
        "ch_7",
        "re_1",
        "dp_7",
        "prod_action",
        "prod_movie",
    }


def test_the_api_reads_movie_metadata_as_derive_does() -> None:
    from api.app import render_entitlements

    settings = Settings()
    prod = product("prod_x", movie="1, 2", groups="a, b")
    buy = purchase("pi_1", movie="3,4", products=("prod_x",))
    ent = derive(facts(purchases=[buy], products={"prod_x": prod}), POLICY)
    row = {
        "products": {"prod_x": prod.to_record()},
        "subscriptions": [],
        "purchases": [buy.to_record()],
        "customer_record": None,
        "groups": [],
        "movie_ids": list(ent.movie_ids),
        "as_of_event": None,
        "as_of_created": None,
    }
    shown = render_entitlements("cus_1", row, settings)["purchases"][0]["movie_ids"]
    assert sorted(shown) == list(ent.movie_ids) == ["1, 2", "3,4"]
