"""Entitlement recomputation: which customers a batch may have changed, and their new rights.

`customer_entitlements` is recomputed from the mirrored rows, never patched by increments.
A batch reaches customers directly (the customer of every changed row) and through links: a
product whose grants changed reaches its subscribers and buyers; a refund or a dispute names
a payment intent or charge (rarely a customer), an invoice payment an invoice and a payment
intent, and each reaches whoever paid with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from projections import changes
from projections.model.entitlements import (
    Entitlement,
    Policy,
    derive,
    gather,
    link_keys,
    product_ids,
)
from projections.model.fold import FoldResult
from projections.model.metadata import groups_in, movies_in
from projections.model.rows import ProductFeaturesRow, ProductRow, Row
from projections.upserts import (
    HOLDER_TABLES,
    all_customers,
    empty_staging,
    holders_of,
    load_rows,
    write_entitlements,
)

__all__ = ["derive_many", "recompute", "recompute_all"]

Derived = dict[str, tuple[Entitlement, Row | None]]
# Rows that link to a customer's purchases without naming the customer, in the order they
# reach further: invoice payments add payment intents, charges of those add charge ids;
# refunds and disputes point at any of them.
_LINK_STEPS = (("invoice_payments",), ("charges",), ("refunds", "disputes"))
_MAX_HOPS = 3  # a dispute -> its charge (no customer) -> its payment intent -> the purchase


async def recompute(
    conn: AsyncConnection[Any],
    schema: str,
    policy: Policy,
    folded: FoldResult,
    before: Mapping[tuple[str, str], Row],
    *,
    cause: str | None = "event",
) -> int:
    """Recompute the entitlements of every customer `folded` may have changed; their count.

    With a `cause`, every customer whose entitlements change gets a change row (the feed);
    None writes none (replay's build emits nothing: its swap does).
    """
    customers = {c for c in folded.customers if c}
    # A product reaches its subscribers only when what it grants changed: a price or
    # description edit must not recompute thousands of customers.
    products = {
        p
        for p in folded.products
        if _grants(policy, before.get(("products", p)))
        != _grants(policy, folded.changed.get(("products", p)))
    }
    customers |= await _reached(conn, schema, products | folded.links)
    if not customers:
        return 0
    ordered = sorted(customers)
    derived = await derive_many(conn, schema, policy, ordered)
    held = await write_entitlements(conn, schema, derived)
    if cause:
        nothing = Entitlement((), ())
        feed = [
            changes.Change(
                c,
                held.get(c, nothing),
                ent,
                None if newest is None else newest.event_id,
                None if newest is None else newest.stamp.created,
            )
            for c, (ent, newest) in derived.items()
        ]
        await changes.record(conn, schema, feed, cause)
    return len(customers)


async def _reached(conn: AsyncConnection[Any], schema: str, links: set[str]) -> set[str]:
    """The customers whose rows point at `links`, following rows that name no customer (a
    charge without one, an invoice payment) through their own refs, a few hops at most."""
    customers: set[str] = set()
    seen: set[str] = set()
    for _ in range(_MAX_HOPS):
        todo = sorted(links - seen)
        if not todo:
            break
        seen |= links
        links = set()
        for customer, refs in await holders_of(conn, schema, todo):
            if customer:
                customers.add(customer)
            else:
                links.update(refs)
    return customers


def _grants(policy: Policy, row: Row | None) -> tuple[object, ...] | None:
    """What a product row contributes to entitlements (None: no such product)."""
    if not isinstance(row, ProductRow):
        return None
    meta = row.metadata
    return (row.deleted, groups_in(meta, policy.group_key), movies_in(meta, policy.movie_key))


async def recompute_all(
    conn: AsyncConnection[Any], schema: str, policy: Policy, *, chunk: int = 5000
) -> int:
    """Recompute every customer's entitlements in `schema` (replay defers the per-batch
    recomputation and does it once, after the bulk load); the number of customers."""
    customers = await all_customers(conn, schema)
    for i in range(0, len(customers), chunk):
        part = customers[i : i + chunk]
        async with conn.transaction():
            await write_entitlements(conn, schema, await derive_many(conn, schema, policy, part))
            # the staging table empties at commit; this may be a savepoint of the caller's
            await empty_staging(conn, "customer_entitlements")
    return len(customers)


async def derive_many(
    conn: AsyncConnection[Any], schema: str, policy: Policy, customers: Sequence[str]
) -> Derived:
    """Entitlements of `customers` from the mirrored rows of `schema`, each with the newest
    row they were derived from (the event the projection is current as of)."""
    ids = list(customers)
    rows: dict[tuple[str, str], Row] = {}
    for table in HOLDER_TABLES:
        for row in await load_rows(conn, schema, table, "customer = ANY(%s)", ids):
            rows[(table, row.id)] = row
    for step in _LINK_STEPS:
        keys = sorted(link_keys(rows.values()))
        if not keys:
            break
        for table in step:
            for row in await load_rows(conn, schema, table, "refs && %s", keys):
                rows.setdefault((table, row.id), row)
    wanted = sorted(product_ids(rows.values()))
    products = {
        p.id: p
        for p in await load_rows(conn, schema, "products", "id = ANY(%s)", wanted)
        if isinstance(p, ProductRow)
    }
    features = {
        f.id: f
        for f in await load_rows(conn, schema, "product_features", "id = ANY(%s)", wanted)
        if isinstance(f, ProductFeaturesRow)
    }
    out: Derived = {}
    for customer, facts in gather(ids, rows.values(), products, features).items():
        newest = max(facts.rows(), key=lambda r: r.stamp, default=None)
        out[customer] = (derive(facts, policy), newest)
    return out
