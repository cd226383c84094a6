"""A customer's history as readers see it: their changes, newest first; what they held at a
moment (`as_of`); the rows `explain` reads.

The rows are `<version>.history` (written with the change rows, `projections.changes`; a
replay's build writes them for the whole log), read through `live.history`: the active
version's. Each row is one change of one customer's entitlements: one batch (several events of
that customer folded together show as one change), a one-customer rebuild, or one event of a
replay's build. Read only: these run on the read API's database, which may be a replica.

"What they held at T" is the state after the last change (in the order the version applied
them) whose event was created at or before T. The catalogue (which movie is in which group)
is not versioned in time: a past answer uses today's catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from projections.feed import Change, entitlement_diff
from projections.schema import CONTROL, LIVE

__all__ = ["Entry", "Page", "State", "entries_until", "movie", "page", "state_at"]

_COLUMNS = """h.id, h.customer, h.groups_before, h.groups_after, h.movies_before,
    h.movies_after, h.cause, h.event_id, h.event_type, h.event_created, h.grants,
    h.created_at"""

# Newest first; `before` is the cursor (an id of this version's history). The version is read
# in the same statement as the view it names, so the two agree across a swap.
_PAGE_SQL = f"""
SELECT (SELECT version FROM {CONTROL}.active) AS version, {_COLUMNS}
FROM {LIVE}.history h
WHERE h.customer = %(customer)s AND (%(before)s::bigint IS NULL OR h.id < %(before)s)
ORDER BY h.id DESC
LIMIT %(limit)s
"""

# The first change (when the customer's history begins) and the last one at or before `at`.
_STATE_SQL = f"""
SELECT (SELECT version FROM {CONTROL}.active) AS version,
       (SELECT min(event_created) FROM {LIVE}.history
         WHERE customer = %(customer)s) AS first_created,
       s.*
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM {LIVE}.history h
     WHERE h.customer = %(customer)s AND h.event_created <= %(at)s
     ORDER BY h.id DESC LIMIT 1
) s ON true
"""

# Every change up to `at` (all when None), in the order applied: explain walks them.
_UNTIL_SQL = f"""
SELECT (SELECT version FROM {CONTROL}.active) AS version, {_COLUMNS}
FROM {LIVE}.history h
WHERE h.customer = %(customer)s AND (%(at)s::bigint IS NULL OR h.event_created <= %(at)s)
ORDER BY h.id
LIMIT %(limit)s
"""

_MOVIE_SQL = f"SELECT movie_id, title, groups FROM {CONTROL}.movies WHERE movie_id = %s"


@dataclass(frozen=True, slots=True)
class Entry(Change):
    """One change of one customer's entitlements in the active version: a change row with
    what history adds (the causing event's type, the grant sources at write time). Its cause
    is event | rebuild | build (a replay's build)."""

    event_type: str | None
    grants: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "when": self.event_created,
            "groups": entitlement_diff(self.groups_before, self.groups_after),
            "movies": entitlement_diff(self.movies_before, self.movies_after),
            "cause": self.cause,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "version": self.version,
            "recorded_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next: int | None  # pass as `before` for older changes; None: nothing older


@dataclass(frozen=True, slots=True)
class State:
    """What the customer held at a moment: `entry` is the last change at or before it (None
    when the moment is before `first_created` or the customer has no history)."""

    first_created: int | None
    entry: Entry | None
    version: int | None


def _entry(row: dict[str, Any]) -> Entry:
    return Entry(**{k: v for k, v in row.items() if k not in ("first_created",)})


async def page(
    conn: AsyncConnection[Any], customer: str, *, before: int | None, limit: int
) -> Page:
    """Up to `limit` changes of `customer` older than the cursor `before`, newest first."""
    params = {"customer": customer, "before": before, "limit": limit + 1}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_PAGE_SQL, params)
        rows = await cur.fetchall()
    entries = [_entry(r) for r in rows[:limit]]
    return Page(entries, entries[-1].id if len(rows) > limit else None)


async def state_at(conn: AsyncConnection[Any], customer: str, at: int) -> State:
    """What `customer` held at unix time `at` (one statement, one snapshot)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_STATE_SQL, {"customer": customer, "at": at})
        row = await cur.fetchone()
    assert row is not None  # FROM (SELECT 1): always one row
    entry = None if row["id"] is None else _entry(row)
    return State(row["first_created"], entry, row["version"])


async def entries_until(
    conn: AsyncConnection[Any], customer: str, at: int | None, *, limit: int = 10_000
) -> list[Entry]:
    """`customer`'s changes up to unix time `at` (all when None), oldest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_UNTIL_SQL, {"customer": customer, "at": at, "limit": limit})
        return [_entry(r) for r in await cur.fetchall()]


async def movie(conn: AsyncConnection[Any], movie_id: str) -> tuple[str, list[str]] | None:
    """(title, groups) of a catalogue movie, or None."""
    cur = await conn.execute(_MOVIE_SQL, (movie_id,))
    row = await cur.fetchone()
    return None if row is None else (str(row[1]), list(row[2]))
