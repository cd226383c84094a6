"""A swap compares the two versions and writes its change rows in slices of
`changes.DIFF_SLICE` customers (a replay into an empty live version differs for every
customer), in its one transaction: the same change rows, in the same id order, as one slice
holding them all. Real Postgres, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from projections import changes, versions
from projections import schema as db

Conn = psycopg.AsyncConnection[Any]

# customer -> (groups, movies) in the live version (v1) and in the new one (v2). Ids whose
# code-point order is not a locale's (upper case, accents), customers in one version only,
# and customers whose arrays differ only in order (no difference: left out of the slices).
LIVE = {
    **{f"cus_{i:02}": (["action"], ["m1"]) for i in range(12)},  # 6 lose, 6 keep
    **{f"cus_same_{i}": (["b", "a"], ["m2", "m1"]) for i in range(5)},
    "cus_Z": (["drama"], []),
    "cus_é": ([], ["m9"]),
    "cus_gone": (["action", "drama"], ["m3"]),
}
NEW = {
    **{f"cus_{i:02}": ([], []) if i % 2 else (["action"], ["m1"]) for i in range(12)},
    **{f"cus_same_{i}": (["a", "b"], ["m1", "m2"]) for i in range(5)},  # reordered: no change
    "cus_Z": (["drama", "action"], ["m4"]),
    "cus_é": (["kids"], []),
    "cus_a": (["action"], []),
    "cus_É": ([], ["m5"]),
    **{f"cus_new_{i}": (["kids"], ["m6"]) for i in range(6)},
}


def expected() -> list[tuple[Any, ...]]:
    """The change rows of a swap from LIVE to NEW, by customer in code-point order."""
    out = []
    for customer in sorted(set(LIVE) | set(NEW)):
        gb, mb = LIVE.get(customer, ([], []))
        ga, ma = NEW.get(customer, ([], []))
        if (sorted(gb), sorted(mb)) != (sorted(ga), sorted(ma)):
            out.append((customer, sorted(gb), sorted(ga), sorted(mb), sorted(ma)))
    return out


@pytest.fixture
async def conn(migrated_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as c:
        yield c


async def two_versions(conn: Conn) -> tuple[str, int, str]:
    """LIVE in the active version, NEW in a new `ready` one: (live schema, version, schema)."""
    cur = await conn.execute(
        "SELECT v.schema_name FROM entitled.versions v JOIN entitled.active a USING (version)"
    )
    row = await cur.fetchone()
    assert row is not None
    live = str(row[0])
    version, schema = await versions.create(conn, "slices", carry_from=live)
    await versions.mark_ready(conn, version)
    # Customer ids ordered as in a database created with a locale (the tests' are in C):
    # ICU's root order puts cus_a before cus_Z, Python's (code points) after. The live view
    # reads the column, so it goes while the column changes.
    await conn.execute("DROP VIEW live.customer_entitlements")
    for target in (live, schema):
        await conn.execute(
            sql.SQL('ALTER TABLE {} ALTER COLUMN customer TYPE text COLLATE "und-x-icu"').format(
                sql.Identifier(target, "customer_entitlements")
            )
        )
    await db.point_live_views(conn, live)
    for target, rows in ((live, LIVE), (schema, NEW)):
        for customer, (groups, movies) in rows.items():
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (customer, groups, movie_ids, as_of_event, as_of_created)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ).format(sql.Identifier(target, "customer_entitlements")),
                (customer, groups, movies, f"evt_{customer}", len(customer)),
            )
    return live, version, schema


async def _swapped(conn: Conn, version: int) -> list[tuple[Any, ...]]:
    """Swap to `version`, read its change rows in id order, and roll it all back."""
    async with conn.transaction(force_rollback=True):
        await versions.swap(conn, version)
        cur = await conn.execute(
            "SELECT id, customer, groups_before, groups_after, movies_before, movies_after,"
            " cause, event_id, event_created, version FROM entitled.changes ORDER BY id"
        )
        rows = await cur.fetchall()
    ids = [r[0] for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # one run of ids, no gap
    return [r[1:] for r in rows]


async def test_a_swap_in_slices_writes_what_one_slice_would(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, version, schema = await two_versions(conn)
    want = expected()
    assert len(want) == 6 + 2 + 1 + 2 + 6  # lost, Z and é changed, gone, a and É, new ones

    monkeypatch.setattr(changes, "DIFF_SLICE", 1000)
    whole = await _swapped(conn, version)
    monkeypatch.setattr(changes, "DIFF_SLICE", 4)
    async with conn.transaction():  # the cursor lives in a transaction
        parts = [part async for part in versions.differences(conn, live, schema)]
    assert len(parts) >= len(want) // 4, [len(p) for p in parts]  # sliced indeed
    assert [d["customer"] for p in parts for d in p] == [w[0] for w in want]
    sliced = await _swapped(conn, version)

    assert sliced == whole
    assert [r[:5] for r in sliced] == want
    assert {(r[5], r[8]) for r in sliced} == {("replay", version)}
    # the event is the new version's as_of_event (none for a customer it does not hold)
    assert [r[6] for r in sliced] == [f"evt_{w[0]}" if w[0] in NEW else None for w in want]
