"""Entitlement recomputation: which customers a batch may have changed, and their new rights.

`customer_entitlements` is recomputed from the mirrored rows, never patched by increments.
A batch reaches customers directly (the customer of every changed row) and through links: a
product whose grants changed reaches its subscribers and buyers; a refund names a payment
intent (rarely a customer) and reaches whoever paid with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection, sql

from projections import schema as db
from projections.entitlements import Entitlement, Policy, derive
from projections.fold import FoldResult
from projections.rows import ChargeRow, ProductRow, PurchaseRow, RefundRow, Row, SubscriptionRow
from projections.upserts import load_rows, write_entitlements

__all__ = ["derive_many", "recompute", "recompute_all"]

R = TypeVar("R", SubscriptionRow, PurchaseRow, ChargeRow, RefundRow, ProductRow)
Derived = dict[str, tuple[Entitlement, Row | None]]
# Tables whose rows name a customer and point (refs) at what links them to others.
_HOLDER_TABLES = ("subscriptions", "purchases", "charges")


async def recompute(
    conn: AsyncConnection[Any],
    schema: str,
    policy: Policy,
    folded: FoldResult,
    before: Mapping[tuple[str, str], Row],
) -> int:
    """Recompute the entitlements of every customer `folded` may have changed; their count."""
    customers = {c for c in folded.customers if c}
    # A product reaches its subscribers only when what it grants changed: a price or
    # description edit must not recompute thousands of customers.
    products = {
        p
        for p in folded.products
        if _grants(policy, before.get(("products", p)))
        != _grants(policy, folded.changed.get(("products", p)))
    }
    links = products | set(folded.payment_intents)
    if links:
        q = sql.SQL(" UNION ").join(
            sql.SQL("SELECT customer FROM {} WHERE refs && %(links)s").format(
                db.qualified(schema, t)
            )
            for t in _HOLDER_TABLES
        )
        cur = await conn.execute(q, {"links": sorted(links)})
        customers.update(r[0] for r in await cur.fetchall() if r[0])
    if customers:
        derived = await derive_many(conn, schema, policy, sorted(customers))
        await write_entitlements(conn, schema, derived)
    return len(customers)


def _grants(policy: Policy, row: Row | None) -> tuple[object, ...] | None:
    """What a product row contributes to entitlements (None: no such product)."""
    if not isinstance(row, ProductRow):
        return None
    meta = dict(row.metadata)
    return (row.deleted, meta.get(policy.group_key), meta.get(policy.movie_key))


async def recompute_all(
    conn: AsyncConnection[Any], schema: str, policy: Policy, *, chunk: int = 5000
) -> int:
    """Recompute every customer's entitlements in `schema` (replay defers the per-batch
    recomputation and does it once, after the bulk load); the number of customers."""
    cur = await conn.execute(
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT customer FROM {} WHERE customer IS NOT NULL").format(
                db.qualified(schema, t)
            )
            for t in ("customers", *_HOLDER_TABLES)
        )
    )
    customers = sorted(r[0] for r in await cur.fetchall())
    for i in range(0, len(customers), chunk):
        part = customers[i : i + chunk]
        async with conn.transaction():  # the staging table lives for a transaction
            await write_entitlements(conn, schema, await derive_many(conn, schema, policy, part))
    return len(customers)


async def _typed(
    conn: AsyncConnection[Any], schema: str, cls: type[R], where: str, arg: object
) -> list[R]:
    rows = await load_rows(conn, schema, cls.table, where, arg)
    return [r for r in rows if isinstance(r, cls)]


async def derive_many(
    conn: AsyncConnection[Any], schema: str, policy: Policy, customers: Sequence[str]
) -> Derived:
    """Entitlements of `customers` from the mirrored rows of `schema`, each with the newest
    row they were derived from (the event the projection is current as of)."""
    by_customer = "customer = ANY(%s)"
    ids = list(customers)
    subs = await _typed(conn, schema, SubscriptionRow, by_customer, ids)
    purchases = await _typed(conn, schema, PurchaseRow, by_customer, ids)
    charges = await _typed(conn, schema, ChargeRow, by_customer, ids)
    intents = sorted(
        {i for p in purchases for i in _intents(p)}
        | {c.payment_intent for c in charges if c.payment_intent}
    )
    refunds = await _typed(conn, schema, RefundRow, "refs && %s", intents)
    product_ids = sorted(
        {i.product for s in subs for i in s.items if i.product}
        | {p for pu in purchases for p in pu.product_ids}
    )
    products = {
        p.id: p for p in await _typed(conn, schema, ProductRow, "id = ANY(%s)", product_ids)
    }
    subs_of: dict[str, list[SubscriptionRow]] = defaultdict(list)
    purchases_of: dict[str, list[PurchaseRow]] = defaultdict(list)
    charges_of: dict[str, list[ChargeRow]] = defaultdict(list)
    refunds_of: dict[str, list[RefundRow]] = defaultdict(list)
    for s in subs:
        subs_of[s.customer or ""].append(s)
    for p in purchases:
        purchases_of[p.customer or ""].append(p)
    for ch in charges:
        charges_of[ch.customer or ""].append(ch)
    for r in refunds:
        if r.payment_intent:
            refunds_of[r.payment_intent].append(r)
    out: Derived = {}
    for c in customers:
        mine = {i for p in purchases_of[c] for i in _intents(p)}
        refunds_c = [r for pi in sorted(mine) for r in refunds_of[pi]]
        ent = derive(subs_of[c], purchases_of[c], charges_of[c], refunds_c, products, policy)
        used: list[Row] = [*subs_of[c], *purchases_of[c], *charges_of[c], *refunds_c]
        used += [products[i.product] for s in subs_of[c] for i in s.items if i.product in products]
        used += [products[p] for pu in purchases_of[c] for p in pu.product_ids if p in products]
        out[c] = (ent, max(used, key=lambda r: r.stamp, default=None))
    return out


def _intents(p: PurchaseRow) -> set[str]:
    """The payment intents that paid for a purchase (a payment intent pays for itself)."""
    out = {p.payment_intent} if p.payment_intent else set()
    if p.kind == "payment_intent":
        out.add(p.id)
    return out
