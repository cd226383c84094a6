"""The change feed: one row per customer whose entitlements changed, in the same transaction.

A batch (or a replay swap, a rollback, a one-customer rebuild) that changes what a customer
holds writes one `entitled.changes` row for them: groups and movies before and after, the
cause, the event behind it. The row commits with the change itself or not at all, so the feed
can neither miss a change nor announce one that did not happen. A relay publishes the rows to
Kafka afterwards (`processors.relay`); the read API serves them over HTTP.

Ids are assigned in commit order: a transaction takes a lock on the feed just before it
inserts its rows and keeps it until it commits, so a reader that has seen id N never later
finds a new id below N (a plain sequence would not promise that under concurrent commits).
The lock is taken last and held for one INSERT and the commit: writers otherwise run in
parallel.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from projections import schema as db
from projections.model.entitlements import Entitlement
from projections.upserts import clean_text

__all__ = [
    "CHANGES_CHANNEL",
    "DIFF_SLICE",
    "FOLDED_CHANNEL",
    "VERSION_CHANNEL",
    "Change",
    "diff_slices",
    "listen",
    "mark_published",
    "pending",
    "record",
    "try_lock",
    "unlock",
    "unpublished",
    "version_number",
]

CHANGES_CHANNEL = "entitled_changes"  # NOTIFY payload: the greatest new change id
FOLDED_CHANNEL = "entitled_folded"  # NOTIFY after a batch that applied events commits
VERSION_CHANNEL = "entitled_version"  # NOTIFY payload: the version a swap made active
_LOCK = f"{db.CONTROL}.changes"
# Customers per slice of a comparison of two versions (`diff_slices`): a replay into an empty
# live version differs for every customer (229k at 1M events), and a swap then held all of
# them at once, as rows, objects and one JSON parameter. A module constant: tests lower it.
DIFF_SLICE = 5000
_cursors = itertools.count()  # server-side cursor names, unique in a session


@dataclass(frozen=True, slots=True)
class Change:
    customer: str
    before: Entitlement
    after: Entitlement
    event_id: str | None = None
    event_created: int | None = None
    event_type: str | None = None
    grants: Mapping[str, Any] | None = None  # why each group and movie is held after it


def version_number(schema: str) -> int:
    """`entitled_v7` -> 7."""
    return int(schema.rsplit("_v", 1)[1])


def _rows(changes: Sequence[Change], *, keep_unchanged: bool = False) -> list[dict[str, Any]]:
    real = sorted(
        (c for c in changes if keep_unchanged or c.before != c.after), key=lambda c: c.customer
    )
    return [
        {
            "customer": clean_text(c.customer),
            "groups_before": list(c.before.groups),
            "groups_after": list(c.after.groups),
            "movies_before": list(c.before.movie_ids),
            "movies_after": list(c.after.movie_ids),
            "event_id": None if c.event_id is None else clean_text(c.event_id),
            "event_type": None if c.event_type is None else clean_text(c.event_type),
            "event_created": c.event_created,
            "grants": c.grants or {},
        }
        for c in real
    ]


# The version's history rows (`projections.history`) from the same JSON rows as the feed's.
_HISTORY_INSERT = """
    INSERT INTO {history} (customer, groups_before, groups_after, movies_before, movies_after,
        cause, event_id, event_type, event_created, grants)
    SELECT r.customer, r.groups_before, r.groups_after, r.movies_before, r.movies_after,
           %(cause)s, r.event_id, r.event_type, r.event_created, coalesce(r.grants, '{{}}')
      FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
           customer text, groups_before text[], groups_after text[],
           movies_before text[], movies_after text[], event_id text, event_type text,
           event_created bigint, grants jsonb)
"""


async def record_history(
    conn: AsyncConnection[Any], schema: str, changes: Sequence[Change], cause: str
) -> None:
    """History rows only, no change row (a replay's build: its swap publishes the
    differences)."""
    rows = _rows(changes)
    if rows:
        await conn.execute(
            sql.SQL(_HISTORY_INSERT).format(history=db.qualified(schema, "history")),
            {"cause": cause, "rows": orjson.dumps(rows).decode()},
        )


async def record(
    conn: AsyncConnection[Any],
    schema: str,
    changes: Sequence[Change],
    cause: str,
    *,
    history: bool = True,
    keep_unchanged: bool = False,
    read_id: bool = True,
) -> int | None:
    """Insert change rows (ids in commit order) and, with `history`, the version's history
    rows, and notify, in one round trip; the greatest id, or None when nothing changed. A
    swap passes `history=False`: the build already recorded how the version got there.
    `keep_unchanged` writes a row even where before and after are equal (a forgotten
    customer who held nothing is still announced). Without `read_id` (None): nothing to
    wait for, so in a pipelined transaction (`projections.reads`) the statement travels
    with the transaction's last ones instead of costing a round trip of its own."""
    rows = _rows(changes, keep_unchanged=keep_unchanged)
    if not rows:
        return None
    also = (
        sql.SQL("hist AS ({}),").format(
            sql.SQL(_HISTORY_INSERT).format(history=db.qualified(schema, "history"))
        )
        if history
        else sql.SQL("")
    )
    # The lock row is read before any id is drawn: ids follow the order of commits.
    query = sql.SQL(
        f"""
        WITH {{also}} feed_lock AS (SELECT pg_advisory_xact_lock(hashtext(%(lock)s))),
        ins AS (
            INSERT INTO {db.CONTROL}.changes (id, customer, groups_before, groups_after,
                movies_before, movies_after, cause, event_id, event_created, version)
            SELECT nextval('{db.CONTROL}.change_ids'), r.customer, r.groups_before,
                   r.groups_after, r.movies_before, r.movies_after, %(cause)s, r.event_id,
                   r.event_created, %(version)s
              FROM feed_lock, jsonb_to_recordset(%(rows)s::jsonb) AS r(
                   customer text, groups_before text[], groups_after text[],
                   movies_before text[], movies_after text[], event_id text,
                   event_created bigint)
            RETURNING id
        )
        SELECT max(id), pg_notify(%(channel)s, max(id)::text) FROM ins
        """
    ).format(also=also)
    cur = await conn.execute(
        query,
        {
            "lock": _LOCK,
            "cause": cause,
            "version": version_number(schema),
            "rows": orjson.dumps(rows).decode(),
            "channel": CHANGES_CHANNEL,
        },
    )
    if not read_id:
        return None
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


_DIFF = """
    SELECT coalesce(a.customer, b.customer),
           coalesce(a.groups, '{{}}'), coalesce(b.groups, '{{}}'),
           coalesce(a.movie_ids, '{{}}'), coalesce(b.movie_ids, '{{}}'),
           b.as_of_event, b.as_of_created
      FROM {old} a FULL JOIN {new} b ON a.customer = b.customer
     WHERE a.groups IS DISTINCT FROM b.groups
        OR a.movie_ids IS DISTINCT FROM b.movie_ids
     ORDER BY coalesce(a.customer, b.customer) COLLATE "C"
"""


async def diff_slices(
    conn: AsyncConnection[Any], old: str, new: str
) -> AsyncIterator[list[Change]]:
    """The customers whose entitlements differ between two versions, in customer order, at
    most `DIFF_SLICE` at a time (for a swap's change rows and replay's report). Read through
    a server-side cursor, so only one slice is in memory: the caller must hold a
    transaction (the cursor lives in it), and every slice comes from the one snapshot the
    cursor took.

    Ordered by code point (`COLLATE "C"`, as Python sorts `str`): each slice's change rows
    (`record` sorts them by customer) then follow one another in the same order as the
    rows of one call for all of them would."""
    query = sql.SQL(_DIFF).format(
        old=db.qualified(old, "customer_entitlements"),
        new=db.qualified(new, "customer_entitlements"),
    )
    async with conn.cursor(name=f"entitled_diff_{next(_cursors)}") as cur:
        await cur.execute(query)
        while rows := await cur.fetchmany(DIFF_SLICE):
            out = []
            for customer, g_old, g_new, m_old, m_new, event_id, created in rows:
                before = Entitlement(tuple(sorted(g_old)), tuple(sorted(m_old)))
                after = Entitlement(tuple(sorted(g_new)), tuple(sorted(m_new)))
                if before != after:
                    out.append(Change(customer, before, after, event_id, created))
            if out:
                yield out


async def unpublished(conn: AsyncConnection[Any], *, limit: int = 500) -> list[dict[str, Any]]:
    """The oldest change rows the relay has not published yet, in id order."""
    cur = await conn.execute(
        "SELECT id, customer, groups_before, groups_after, movies_before, movies_after,"
        f" cause, event_id, event_created, version, created_at FROM {db.CONTROL}.changes"
        " WHERE published_at IS NULL ORDER BY id LIMIT %s",
        (limit,),
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def mark_published(conn: AsyncConnection[Any], ids: Sequence[int]) -> None:
    await conn.execute(
        f"UPDATE {db.CONTROL}.changes SET published_at = now() WHERE id = ANY(%s)", (list(ids),)
    )


async def pending(conn: AsyncConnection[Any]) -> tuple[int, float]:
    """(changes not yet published, age in seconds of the oldest of them)."""
    cur = await conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
        f" FROM {db.CONTROL}.changes WHERE published_at IS NULL"
    )
    row = await cur.fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


async def listen(conn: AsyncConnection[Any]) -> None:
    """Have `conn` (autocommit) notified of every batch of new change rows."""
    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")


async def try_lock(conn: AsyncConnection[Any], name: str) -> bool:
    """Take the session-level advisory lock `name` if nobody holds it (the relay's
    leadership: it is released when the session ends)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def unlock(conn: AsyncConnection[Any], name: str) -> None:
    """Release the session-level advisory lock `name` (a clean hand-over, before the
    session ends)."""
    await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
