"""Forgetting a customer in Postgres: who is linked to them, and deleting all of it.

A customer's data is keyed in the log by more than their id: a payment intent made before
the customer was attached is keyed by its own id, and so are refunds and disputes (Stripe
puts no customer on them). `linked_subjects` follows the mirrored rows of every projection
version from the customer to those ids (their rows' `customer`, the payment intents of their
purchases and charges, the rows that point at those: refunds, disputes, invoice payments)
and adds the keys of dead letters whose raw event names the customer. Those are the subjects
whose data keys the caller deletes (`entitled.keyring`): this module holds only the SQL.

`erase` then deletes, in one transaction, in every version: the rows of those subjects, the
customer's entitlements and history, the dead letters of those subjects (or naming the
customer), the customer's change rows; it writes one change (cause `forget`: everything
taken away; no history row) and the erasure record (customer id, subjects, when, who asked:
no personal data).

`forget` is the whole order of it: link, delete the keys (the caller's `shred`), give every
process `grace_s` to learn of it, delete the rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from projections import changes
from projections import schema as db
from projections.model.entitlements import Entitlement

__all__ = ["Erased", "erase", "erasures", "forget", "leftovers", "linked_subjects"]

# Mirrored tables that can concern a customer; products, prices and product features never do.
_LINKED = tuple(t for t in db.MIRROR_TABLES if t not in ("products", "prices", "product_features"))
# What a row points at that is itself keyed by its own id in the log (never a product)
_POINTS_AT = {
    "purchases": "ARRAY[record->>'payment_intent']",
    "charges": "refs",
    "refunds": "refs",
    "disputes": "refs",
    "invoice_payments": "refs",
}


@dataclass(frozen=True)
class Erased:
    customer: str
    subjects: tuple[str, ...]
    keys: int  # data keys deleted
    rows: int  # rows deleted, every version and table together
    versions: int


async def _schemas(conn: AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(f"SELECT schema_name FROM {db.CONTROL}.versions ORDER BY version")
    names = [str(r[0]) for r in await cur.fetchall()]
    present = []
    for name in names:  # a dropped version's row may outlive its schema briefly
        cur = await conn.execute("SELECT to_regnamespace(%s)", (name,))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            present.append(name)
    return present


async def linked_subjects(conn: AsyncConnection[Any], customer: str) -> list[str]:
    """The customer and every id the projection links to them, in any version."""
    subjects = {customer}
    needle = customer.encode()
    for schema in await _schemas(conn):
        for _ in range(6):  # customer -> sessions -> payment intents -> refunds: a few hops
            before = len(subjects)
            wanted = sorted(subjects)
            for table in _LINKED:
                points = _POINTS_AT.get(table, "'{{}}'::text[]")  # braces: sql.SQL's
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT id, " + points + " FROM {} WHERE customer = %(c)s"
                        " OR id = ANY(%(s)s) OR refs && %(s)s::text[]"
                    ).format(db.qualified(schema, table)),
                    {"c": customer, "s": wanted},
                )
                for row_id, pointed in await cur.fetchall():
                    subjects.add(str(row_id))
                    subjects.update(str(p) for p in pointed or () if p)
            if len(subjects) == before:
                break
        cur = await conn.execute(
            sql.SQL("SELECT DISTINCT key FROM {} WHERE position(%s IN raw) > 0").format(
                db.qualified(schema, "dead_letters")
            ),
            (needle,),
        )
        subjects.update(str(r[0]) for r in await cur.fetchall())
    return sorted(subjects)


async def erase(
    conn: AsyncConnection[Any],
    customer: str,
    subjects: Sequence[str],
    *,
    keys: int,
    requested_by: str,
) -> Erased:
    """Delete what every version holds of `customer` and `subjects`, publish the `forget`
    change and record the erasure; the caller commits (one transaction)."""
    wanted = sorted({customer, *subjects})
    live = await db.active_schema(conn, lock=True)
    held = await _entitlement(conn, live, customer)
    schemas = await _schemas(conn)
    rows = 0
    for schema in schemas:
        for table in _LINKED:
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer = %s OR id = ANY(%s)").format(
                    db.qualified(schema, table)
                ),
                (customer, wanted),
            )
            rows += cur.rowcount
        for table in ("customer_entitlements", *await _history(conn, schema)):
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer = %s").format(db.qualified(schema, table)),
                (customer,),
            )
            rows += cur.rowcount
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} WHERE key = ANY(%s) OR position(%s IN raw) > 0").format(
                db.qualified(schema, "dead_letters")
            ),
            (wanted, customer.encode()),
        )
        rows += cur.rowcount
    cur = await conn.execute(f"DELETE FROM {db.CONTROL}.changes WHERE customer = %s", (customer,))
    rows += cur.rowcount
    nothing = Entitlement((), ())
    # announced on the feed, but no history row: the version keeps nothing of them
    await changes.record(
        conn,
        live,
        [changes.Change(customer, held, nothing)],
        "forget",
        history=False,
        keep_unchanged=True,
    )
    await conn.execute(
        f"INSERT INTO {db.CONTROL}.erasures (customer, subjects, keys, requested_by)"
        " VALUES (%s, %s, %s, %s)",
        (customer, wanted, keys, requested_by),
    )
    return Erased(customer, tuple(wanted), keys, rows, len(schemas))


async def _history(conn: AsyncConnection[Any], schema: str) -> list[str]:
    """["history"] when `schema` has a history table (versions built before it have none)."""
    cur = await conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."history"',))
    row = await cur.fetchone()
    return ["history"] if row is not None and row[0] is not None else []


async def _entitlement(conn: AsyncConnection[Any], schema: str, customer: str) -> Entitlement:
    cur = await conn.execute(
        sql.SQL("SELECT groups, movie_ids FROM {} WHERE customer = %s").format(
            db.qualified(schema, "customer_entitlements")
        ),
        (customer,),
    )
    row = await cur.fetchone()
    if row is None:
        return Entitlement((), ())
    return Entitlement(tuple(sorted(row[0])), tuple(sorted(row[1])))


Connect = Callable[[], Awaitable[AsyncConnection[Any]]]
Shred = Callable[[Sequence[str]], Awaitable[int]]


async def forget(
    connect: Connect,
    customer: str,
    *,
    shred: Shred,
    requested_by: str,
    grace_s: float,
) -> Erased:
    """Forget `customer`: link, delete the data keys (`shred`: the keyring's, which
    returns how many), wait `grace_s` (every process reads the keys topic that often, so
    none opens their events after it), then delete every row in one transaction.

    Rows a worker folds between the keys' deletion and the end of the grace are deleted
    with the rest; events folded after it no longer open."""
    async with await connect() as conn:
        await db.migrate(conn)
        await conn.commit()
        subjects = await linked_subjects(conn, customer)
        await conn.commit()
    keys = await shred(subjects)
    await asyncio.sleep(grace_s)  # not synchronisation: the keyring followers' period
    async with await connect() as conn, conn.transaction():
        # rows folded meanwhile may link further subjects: delete those keys too
        more = sorted(set(await linked_subjects(conn, customer)) - set(subjects))
        if more:
            keys += await shred(more)
        return await erase(conn, customer, [*subjects, *more], keys=keys, requested_by=requested_by)


async def erasures(conn: AsyncConnection[Any], customer: str) -> list[dict[str, Any]]:
    """The erasure records of `customer` (newest last)."""
    cur = await conn.execute(
        f"SELECT customer, subjects, keys, requested_by, erased_at FROM {db.CONTROL}.erasures"
        " WHERE customer = %s ORDER BY id",
        (customer,),
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def leftovers(
    conn: AsyncConnection[Any], customer: str, subjects: Sequence[str]
) -> list[str]:
    """What any version still holds of `customer` or `subjects`: one line per place. The
    `forget` change and the erasure record are expected and not listed."""
    wanted = sorted({customer, *subjects})
    found: list[str] = []
    like = f"%{customer}%"
    for schema in await _schemas(conn):
        history = await _history(conn, schema)
        for table in (*db.MIRROR_TABLES, "customer_entitlements", *history):
            plain = table in ("customer_entitlements", "history")
            key = "customer" if plain else "id"
            text = "customer" if plain else "record::text"
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {} WHERE customer = %s OR {} = ANY(%s) OR {} LIKE %s"
                ).format(db.qualified(schema, table), sql.Identifier(key), sql.SQL(text)),
                (customer, wanted, like),
            )
            n = int((await cur.fetchone() or (0,))[0])
            if n:
                found.append(f"{schema}.{table}: {n} row(s)")
        letters = sql.SQL(
            "SELECT count(*) FROM {} WHERE key = ANY(%s) OR position(%s IN raw) > 0"
        ).format(db.qualified(schema, "dead_letters"))
        cur = await conn.execute(letters, (wanted, customer.encode()))
        n = int((await cur.fetchone() or (0,))[0])
        if n:
            found.append(f"{schema}.dead_letters: {n} row(s)")
    cur = await conn.execute(
        f"SELECT count(*) FROM {db.CONTROL}.changes WHERE customer = %s AND cause <> 'forget'",
        (customer,),
    )
    n = int((await cur.fetchone() or (0,))[0])
    if n:
        found.append(f"{db.CONTROL}.changes: {n} row(s)")
    return found
