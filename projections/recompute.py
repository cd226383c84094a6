"""Entitlement recomputation: which customers a batch may have changed, and their new rights.

`customer_entitlements` is recomputed from the mirrored rows, never patched by increments.
A batch reaches customers directly (the customer of every changed row) and through links: a
product whose grants changed reaches its subscribers and buyers; a refund or a dispute names
a payment intent or charge (rarely a customer), an invoice payment an invoice and a payment
intent, and each reaches whoever paid with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

from projections import changes, reads
from projections.model import entitlements
from projections.model.entitlements import (
    Entitlement,
    Facts,
    Policy,
    derive,
)
from projections.model.fold import FoldResult
from projections.model.grants import grants
from projections.model.metadata import groups_in, movies_in
from projections.model.rows import ProductFeaturesRow, ProductRow, Row, Stamp
from projections.upserts import (
    HOLDER_TABLES,
    all_customers,
    entitlements_read,
    holders_of,
    load_many,
    load_read,
    named_products_read,
    put_entitlements,
    queue_recompute,
    read_entitlements,
    take_queued,
    write_entitlements,
)

__all__ = [
    "BatchMemo",
    "derive_many",
    "gather_facts",
    "recompute",
    "recompute_all",
    "recompute_queued",
]

Derived = dict[str, tuple[Entitlement, Row | None]]
# Rows that link to a customer's purchases without naming the customer, in the order they
# reach further: invoice payments add payment intents, charges of those add charge ids;
# refunds and disputes point at any of them.
_LINK_STEPS = (("invoice_payments",), ("charges",), ("refunds", "disputes"))
_MAX_HOPS = 3  # a dispute -> its charge (no customer) -> its payment intent -> the purchase
BUILD_SLICE = 2000  # customers a build recomputes or writes at once (`recompute`)


@dataclass
class BatchMemo:
    """What the customers of one transaction hold, kept between its recomputations (a
    build's waves recompute a customer at each of their events): the entitlements are then
    written once, at the end of the transaction (`final`), instead of at every wave; what a
    customer held before a wave comes from here, or from the table the first time."""

    held: dict[str, Entitlement] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)  # customers whose `held` is loaded
    final: Derived = field(default_factory=dict)  # to write at the end

    async def before(
        self, conn: AsyncConnection[Any], schema: str, customers: Sequence[str]
    ) -> dict[str, Entitlement]:
        unknown = [c for c in customers if c not in self.known]
        if unknown:
            self.held.update(await read_entitlements(conn, schema, unknown))
            self.known.update(unknown)
        return {c: self.held[c] for c in customers if c in self.held}

    def after(self, derived: Derived) -> None:
        self.final.update(derived)
        self.held.update((c, ent) for c, (ent, _newest) in derived.items())


async def recompute(
    conn: AsyncConnection[Any],
    schema: str,
    policy: Policy,
    folded: FoldResult,
    before: Mapping[tuple[str, str], Row],
    *,
    cause: str = "event",
    feed: bool = True,
    bound: int | None = None,
    memo: BatchMemo | None = None,
) -> int:
    """Recompute the entitlements of every customer `folded` may have changed; their count.

    Every customer whose entitlements change gets a history row (with why they hold what
    they hold after it) and, with `feed`, a change row; replay's build records the history
    of its version but emits no change: its swap does.

    `bound`: when a product's grants changed and it reaches more than `bound` customers the
    batch does not reach otherwise, they are queued (`recompute_queued` takes them in
    transactions of at most `bound`) instead of recomputed here: a product with 100,000
    subscribers must not make one transaction of 100,000 recomputations (issue 19, point 5).
    Each is still recomputed whole from the rows, in one transaction: never a partial answer.

    `memo`: the entitlements are not written here but kept for the caller to write once at
    the end of its transaction (`BatchMemo.final`).
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
    if bound is None:
        customers |= await _reached(conn, schema, products | folded.links)
    else:
        customers |= await _reached(conn, schema, set(folded.links))
        fanout = await _reached(conn, schema, products) - customers
        if len(fanout) > bound:
            regrouped = [folded.changed.get(("products", p)) for p in products]
            newest = max((r for r in regrouped if r is not None), key=_stamp, default=None)
            event = None if newest is None else newest.event_id
            kind = None if event is None else folded.types.get(event)
            await queue_recompute(conn, schema, fanout, event, kind)
        else:
            customers |= fanout
    if not customers:
        return 0
    ordered = sorted(customers)
    # A build (`memo`) recomputes all of a regroup's subscribers here, at the regroup (its
    # history records them there): in slices, so that a regroup reaching 50,000 customers
    # (a log of 1M events) does not hold all their rows and history rows at once (peak RSS).
    # Each customer is derived alone; the slices in order write the same rows as one call.
    step = BUILD_SLICE if memo is not None else len(ordered)
    for i in range(0, len(ordered), step):
        part = ordered[i : i + step]
        await _recompute(conn, schema, policy, part, folded.types, cause, feed, memo)
    return len(customers)


def _stamp(row: Row) -> Stamp:
    return row.stamp


async def _recompute(
    conn: AsyncConnection[Any],
    schema: str,
    policy: Policy,
    customers: list[str],
    types: Mapping[str, str],
    cause: str,
    feed: bool,
    memo: BatchMemo | None = None,
) -> None:
    """Derive `customers` from the rows, write what changed and its change/history rows."""
    # What they hold is read with their rows, not by the upsert (which then has nothing to
    # wait for: in a pipelined transaction it travels with the last statements, issue 21).
    # Nothing but this writes their entitlements in between: the same answer in one
    # snapshot (SERIALIZABLE, the live batches), and in READ COMMITTED a concurrent writer
    # races the upsert either way.
    old = None if memo is not None else await reads.send(conn, entitlements_read(schema, customers))
    facts = await gather_facts(conn, schema, customers)
    derived = {c: (derive(f, policy), _newest(f)) for c, f in facts.items()}
    if old is not None:
        held = await old.get()
        await put_entitlements(conn, schema, derived)
    else:
        assert memo is not None
        held = await memo.before(conn, schema, customers)
        memo.after(derived)
    rows = _changed(policy, facts, derived, held, types)
    if feed:  # the id is not read: it travels with the transaction's last statements
        await changes.record(conn, schema, rows, cause, read_id=False)
    else:
        await changes.record_history(conn, schema, rows, cause)


async def recompute_queued(
    conn: AsyncConnection[Any], schema: str, policy: Policy, limit: int, *, feed: bool = True
) -> int:
    """Recompute up to `limit` customers a regroup queued (`recompute(..., bound=)`), in the
    caller's transaction; their count (0: the queue is empty). Each is derived from the rows
    as they are now, so a customer folded again since it was queued is simply up to date."""
    taken = await take_queued(conn, schema, limit)
    if not taken:
        return 0
    types = {e: t for _c, e, t in taken if e is not None and t is not None}
    await _recompute(conn, schema, policy, [c for c, _e, _t in taken], types, "event", feed)
    return len(taken)


def _changed(
    policy: Policy,
    facts: Mapping[str, Facts],
    derived: Derived,
    held: Mapping[str, Entitlement],
    types: Mapping[str, str],
) -> list[changes.Change]:
    """The customers whose entitlements changed, with the event behind it and the reasons
    for what they hold after it (computed only for them: it costs)."""
    nothing = Entitlement((), ())
    return [
        changes.Change(
            c,
            held.get(c, nothing),
            ent,
            None if newest is None else newest.event_id,
            None if newest is None else newest.stamp.created,
            None if newest is None else types.get(newest.event_id),
            grants(facts[c], policy),
        )
        for c, (ent, newest) in derived.items()
        if held.get(c, nothing) != ent
    ]


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
    """Recompute every customer's entitlements in `schema` once the bulk load is done; the
    number of customers. The build recomputed as it went (its history), but parallel jobs
    may have folded a product after its subscribers' events: what that changes is
    recorded in the history too."""
    customers = await all_customers(conn, schema)
    for i in range(0, len(customers), chunk):
        part = customers[i : i + chunk]
        async with conn.transaction():
            facts = await gather_facts(conn, schema, part)
            derived = {c: (derive(f, policy), _newest(f)) for c, f in facts.items()}
            held = await write_entitlements(conn, schema, derived)
            await changes.record_history(
                conn, schema, _changed(policy, facts, derived, held, {}), "build"
            )
    return len(customers)


async def derive_many(
    conn: AsyncConnection[Any], schema: str, policy: Policy, customers: Sequence[str]
) -> Derived:
    """Entitlements of `customers` from the mirrored rows of `schema`, each with the newest
    row they were derived from (the event the projection is current as of)."""
    facts = await gather_facts(conn, schema, customers)
    return {c: (derive(f, policy), _newest(f)) for c, f in facts.items()}


def _newest(facts: Facts) -> Row | None:
    return max(facts.rows(), key=lambda r: r.stamp, default=None)


async def gather_facts(
    conn: AsyncConnection[Any], schema: str, customers: Sequence[str]
) -> dict[str, Facts]:
    """The Facts of `customers` from the mirrored rows of `schema`."""
    ids = list(customers)
    # The catalogue their subscriptions and purchases name is sent with their rows, without
    # waiting for them: in a pipelined transaction one round trip for both (issue 21). A
    # product their rows name that it did not ask for (the two statements may see different
    # commits in READ COMMITTED) is loaded after, as before.
    direct = await reads.send(
        conn, load_read(conn, schema, [(t, ids) for t in HOLDER_TABLES], "customer = ANY(%s)")
    )
    named = await reads.send(conn, named_products_read(conn, schema, ids))
    rows: dict[tuple[str, str], Row] = {(t, row.id): row for t, row in await direct.get()}
    for step in _LINK_STEPS:
        keys = sorted(entitlements.link_keys(rows.values()))
        if not keys:
            break
        for t, row in await load_many(conn, schema, [(t, keys) for t in step], "refs && %s"):
            rows.setdefault((t, row.id), row)
    wanted = entitlements.product_ids(rows.values())
    asked, catalogue = await named.get()
    catalogue = [(t, row) for t, row in catalogue if row.id in wanted]
    missing = sorted(wanted - asked)
    if missing:
        catalogue += await load_many(
            conn, schema, [("products", missing), ("product_features", missing)], "id = ANY(%s)"
        )
    products = {p.id: p for _t, p in catalogue if isinstance(p, ProductRow)}
    features = {f.id: f for _t, f in catalogue if isinstance(f, ProductFeaturesRow)}
    return entitlements.gather(ids, rows.values(), products, features)
