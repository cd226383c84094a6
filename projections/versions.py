"""Projection versions: create, list, swap, roll back, drop and compare them (all their SQL).

A version is one schema `entitled_v<N>` (see `schema`) and one row of `entitled.versions`,
whose state goes `building` -> `ready` -> `active` -> `retired`. Replay (`processors.replay`)
builds a new version beside the active one and swaps; this module holds the statements.

The swap takes the active row FOR UPDATE, which waits for the batch the live worker may
have in flight (each batch share-locks that row), then redefines the `live` views and the
active version in the same transaction: readers and the worker see one version or the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from projections import changes
from projections import schema as db
from projections.errors import VersionError

__all__ = [
    "VersionInfo",
    "create",
    "delete_customer",
    "differences",
    "drop",
    "entitled_customers",
    "forget_applied",
    "has_secondary_indexes",
    "list_versions",
    "lock_active",
    "mark_ready",
    "resumable",
    "state_of",
    "swap",
]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    schema: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    bytes: int  # on disk, tables and their indexes


async def list_versions(conn: AsyncConnection[Any]) -> list[VersionInfo]:
    cur = await conn.execute(
        f"""
        SELECT v.version, v.schema_name, v.state, v.created_at, v.activated_at,
               (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = v.schema_name AND c.relkind = 'r')::bigint AS bytes
          FROM {db.CONTROL}.versions v ORDER BY v.version
        """
    )
    return [VersionInfo(*row) for row in await cur.fetchall()]


async def create(
    conn: AsyncConnection[Any], note: str, *, carry_from: str | None
) -> tuple[int, str]:
    """A new, empty version in state `building`, with its secondary indexes: its build
    recomputes entitlements as it goes, to record the version's history, and those reads
    need them. Returns (version, schema).

    The operator's decisions in `carry_from` (the live version) carry over: its `skipped`
    dead letters are copied, so the writer skips the same events in the new version. The
    `applied` rows are an audit trail of that version only, and `poison`/`parked` ones are
    found again by the rebuild itself.
    """
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {db.CONTROL}.versions IN EXCLUSIVE MODE")
        cur = await conn.execute(f"SELECT coalesce(max(version), 0) + 1 FROM {db.CONTROL}.versions")
        row = await cur.fetchone()
        assert row is not None
        version = int(row[0])
        schema = await db.create_version_schema(conn, version)
        await conn.execute(
            f"INSERT INTO {db.CONTROL}.versions (version, schema_name, state, note)"
            " VALUES (%s, %s, 'building', %s)",
            (version, schema, note),
        )
        if carry_from is not None:
            await _copy_skipped(conn, carry_from, schema)
    return version, schema


async def _copy_skipped(conn: AsyncConnection[Any], source: str, target: str) -> None:
    cols = sql.SQL(
        'key, topic, partition, "offset", event_id, event_type, state, error, traceback, raw,'
        " created_at, resolved_at"
    )
    await conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE state = 'skipped'").format(
            db.qualified(target, "dead_letters"), cols, cols, db.qualified(source, "dead_letters")
        )
    )


async def resumable(conn: AsyncConnection[Any]) -> tuple[int, str] | None:
    """The newest version whose build was interrupted, to continue rather than restart."""
    cur = await conn.execute(
        f"SELECT version, schema_name FROM {db.CONTROL}.versions WHERE state = 'building'"
        " ORDER BY version DESC LIMIT 1"
    )
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


async def state_of(conn: AsyncConnection[Any], version: int) -> tuple[str, str]:
    """(schema, state) of `version`; `VersionError` when there is none."""
    cur = await conn.execute(
        f"SELECT schema_name, state FROM {db.CONTROL}.versions WHERE version = %s", (version,)
    )
    row = await cur.fetchone()
    if row is None:
        raise VersionError(f"no version {version}")
    return str(row[0]), str(row[1])


async def mark_ready(conn: AsyncConnection[Any], version: int) -> None:
    """The build of `version` is complete (it may still be behind the log end)."""
    await conn.execute(
        f"UPDATE {db.CONTROL}.versions SET state = 'ready' WHERE version = %s", (version,)
    )


async def lock_active(conn: AsyncConnection[Any]) -> int | None:
    """Take the active row FOR UPDATE (in the caller's transaction): the live worker waits
    before its next batch until the transaction ends. Returns the active version."""
    cur = await conn.execute(f"SELECT version FROM {db.CONTROL}.active FOR UPDATE")
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def swap(conn: AsyncConnection[Any], version: int, *, cause: str = "replay") -> None:
    """Make `version` the active one, atomically for readers and the live worker; the
    previous active version is retired (kept for rollback). Every customer whose rights
    differ between the two gets one change row (`cause`: replay or rollback), in the same
    transaction, `changes.DIFF_SLICE` customers at a time (a swap against an empty version
    changes every customer). They are not the target's history: its build recorded that,
    event by event.
    """
    async with conn.transaction():  # a savepoint when the caller holds a transaction
        previous = await lock_active(conn)
        target, _state = await state_of(conn, version)
        await conn.execute(
            f"UPDATE {db.CONTROL}.versions SET state = 'retired' WHERE version = %s", (previous,)
        )
        await conn.execute(
            f"UPDATE {db.CONTROL}.versions SET state = 'active', activated_at = now()"
            " WHERE version = %s",
            (version,),
        )
        await conn.execute(f"UPDATE {db.CONTROL}.active SET version = %s", (version,))
        await db.point_live_views(conn, target)
        if previous is not None:
            # The schemas compared by name, not through the views just pointed: the change
            # rows go in slices (`changes.DIFF_SLICE`), all in this transaction.
            old = (await state_of(conn, previous))[0]
            async for differ in changes.diff_slices(conn, old, target):
                await changes.record(conn, target, differ, cause, history=False)
        # Delivered at commit: a read model holding the previous version's answers empties
        # itself even when no customer's rights differ (no change row, hence no other news).
        await conn.execute("SELECT pg_notify(%s, %s)", (changes.VERSION_CHANNEL, str(version)))


async def drop(conn: AsyncConnection[Any], version: int) -> None:
    """Drop a version that is not active, its schema and its row."""
    async with conn.transaction():
        cur = await conn.execute(
            f"SELECT schema_name, state FROM {db.CONTROL}.versions WHERE version = %s FOR UPDATE",
            (version,),
        )
        row = await cur.fetchone()
        if row is None:
            raise VersionError(f"no version {version}")
        if row[1] == "active":
            raise VersionError("the active version cannot be dropped")
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(row[0])))
        await conn.execute(f"DELETE FROM {db.CONTROL}.versions WHERE version = %s", (version,))


async def differences(
    conn: AsyncConnection[Any], live: str, new: str
) -> AsyncIterator[list[dict[str, Any]]]:
    """Customers whose entitlements differ between two versions: groups and movies gained
    or lost in `new` relative to `live`, by customer, in slices (`changes.diff_slices`:
    inside a transaction)."""
    async for part in changes.diff_slices(conn, live, new):
        yield [
            {
                "customer": c.customer,
                "groups_gained": sorted(set(c.after.groups) - set(c.before.groups)),
                "groups_lost": sorted(set(c.before.groups) - set(c.after.groups)),
                "movies_gained": sorted(set(c.after.movie_ids) - set(c.before.movie_ids)),
                "movies_lost": sorted(set(c.before.movie_ids) - set(c.after.movie_ids)),
            }
            for c in part
        ]


async def entitled_customers(conn: AsyncConnection[Any], schema: str) -> int:
    """How many customers of `schema` hold any group or movie."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {} WHERE cardinality(groups) > 0 OR cardinality(movie_ids) > 0"
        ).format(db.qualified(schema, "customer_entitlements"))
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def has_secondary_indexes(conn: AsyncConnection[Any], schema: str) -> bool:
    """Whether the deferred secondary indexes of `schema` exist (a resumed build may have
    built them already)."""
    cur = await conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE '%%gin%%'",
        (schema,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def forget_applied(
    conn: AsyncConnection[Any], schema: str, partition: int, offsets: list[int]
) -> None:
    """Forget that the events at `offsets` of `partition` were applied (dedup records), so
    that a one-customer rebuild folds them again."""
    await conn.execute(
        sql.SQL('DELETE FROM {} WHERE partition = %s AND "offset" = ANY(%s)').format(
            db.qualified(schema, "processed_events")
        ),
        (partition, offsets),
    )


async def delete_customer(conn: AsyncConnection[Any], schema: str, customer: str) -> None:
    """Delete `customer`'s mirrored rows (for a rebuild in the same transaction, which then
    recomputes their entitlements: the row stays until then, so the change feed compares the
    rebuilt rights with the ones held before). Dead letters stay: the operator's decisions
    (skip) and the parking of a customer outlive a rebuild."""
    for table in db.MIRROR_TABLES:
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE customer = %s").format(db.qualified(schema, table)),
            (customer,),
        )
