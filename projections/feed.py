"""The change feed as readers see it: pages of `entitled.changes` after a cursor, and whether
an event is folded into the live version yet (read your own writes).

Read only: these run on the read API's database, which may be a streaming replica.

Cursors are change ids. The writer assigns ids in commit order (`projections.changes`), so
a reader that has seen id N never later finds a new id below N: "everything after N" is a
complete resume point, and the greatest id a snapshot holds is a safe cursor even when a
customer filter returned nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from projections.catalog import CATALOG_CHANNEL
from projections.changes import CHANGES_CHANNEL, FOLDED_CHANNEL, VERSION_CHANNEL
from projections.schema import CONTROL, LIVE

__all__ = [
    "Change",
    "EventState",
    "Page",
    "event_state",
    "head",
    "listen_for_news",
    "marks",
    "page_after",
]

_COLUMNS = """c.id, c.customer, c.groups_before, c.groups_after, c.movies_before,
    c.movies_after, c.cause, c.event_id, c.event_created, c.version, c.created_at"""

# One statement, one snapshot: the page and the head (greatest id) it was read with. The
# LEFT JOIN LATERAL keeps the head row when the page is empty.
_PAGE_SQL = f"""
SELECT h.head, {_COLUMNS}
FROM (SELECT coalesce(max(id), 0) AS head FROM {CONTROL}.changes) h
LEFT JOIN LATERAL (
    SELECT * FROM {CONTROL}.changes
    WHERE id > %(after)s
    ORDER BY id LIMIT %(limit)s
) c ON true
ORDER BY c.id
"""

# The (customer, id) index serves one customer's changes in id order.
_CUSTOMER_PAGE_SQL = f"""
SELECT h.head, {_COLUMNS}
FROM (SELECT coalesce(max(id), 0) AS head FROM {CONTROL}.changes) h
LEFT JOIN LATERAL (
    SELECT * FROM {CONTROL}.changes
    WHERE customer = %(customer)s AND id > %(after)s
    ORDER BY id LIMIT %(limit)s
) c ON true
ORDER BY c.id
"""

_HEAD_SQL = f"SELECT coalesce(max(id), 0) FROM {CONTROL}.changes"

# `processed_events` holds the id of every event applied to the version (a duplicate's id is
# there since its first copy's); the dead letters hold the ones parked behind a poison.
_EVENT_STATE_SQL = f"""
SELECT EXISTS (SELECT 1 FROM {LIVE}.processed_events WHERE event_id = %(event)s),
       EXISTS (SELECT 1 FROM {LIVE}.dead_letters
               WHERE event_id = %(event)s AND state IN ('poison', 'parked'))
"""


def entitlement_diff(before: list[str], after: list[str]) -> dict[str, list[str]]:
    """A change's lists as the feed and the history show them: both sides and the delta."""
    return {
        "before": before,
        "after": after,
        "added": [x for x in after if x not in before],
        "removed": [x for x in before if x not in after],
    }


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the feed: what one customer held before and after one cause."""

    id: int
    customer: str
    groups_before: list[str]
    groups_after: list[str]
    movies_before: list[str]
    movies_after: list[str]
    cause: str  # 'event' | 'replay' | 'rollback'
    event_id: str | None
    event_created: int | None
    version: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer,
            "groups": entitlement_diff(self.groups_before, self.groups_after),
            "movies": entitlement_diff(self.movies_before, self.movies_after),
            "cause": self.cause,
            "event_id": self.event_id,
            "event_created": self.event_created,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Page:
    changes: list[Change]
    next: int  # the cursor to pass as `after` for what follows

    def to_json(self) -> dict[str, Any]:
        return {"changes": [c.to_json() for c in self.changes], "next": self.next}


async def page_after(
    conn: AsyncConnection[Any], after: int, limit: int, customer: str | None = None
) -> Page:
    """Up to `limit` changes with id > `after` (of one customer if given), in id order."""
    params = {"after": after, "limit": limit, "customer": customer}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_PAGE_SQL if customer is None else _CUSTOMER_PAGE_SQL, params)
        rows = await cur.fetchall()
    changes = [
        Change(**{k: v for k, v in r.items() if k != "head"}) for r in rows if r["id"] is not None
    ]
    if len(changes) == limit:
        return Page(changes, changes[-1].id)
    # A short page saw everything up to the head of its snapshot: skip past the head (other
    # customers' changes), never back before `after` (a cursor from another database).
    return Page(changes, max(after, int(rows[0]["head"])))


async def head(conn: AsyncConnection[Any]) -> int:
    """The greatest change id (0 for an empty feed): a stream without a cursor starts here."""
    cur = await conn.execute(_HEAD_SQL)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class EventState(enum.Enum):
    FOLDED = "folded"
    PARKED = "parked"  # held in the dead letters (a poison event, or behind one)
    PENDING = "not_yet_folded"


async def event_state(conn: AsyncConnection[Any], event_id: str) -> EventState:
    """Whether the live version has applied `event_id` (its id is recorded) or parked it."""
    cur = await conn.execute(_EVENT_STATE_SQL, {"event": event_id})
    row = await cur.fetchone()
    folded, parked = row if row else (False, False)
    if folded:
        return EventState.FOLDED
    return EventState.PARKED if parked else EventState.PENDING


# The feed's head, a figure that moves with every committed batch or version swap, the
# active version and the count of catalogue writes.
_MARKS_SQL = f"""
SELECT (SELECT coalesce(max(id), 0) FROM {CONTROL}.changes),
       (SELECT coalesce(sum(next_offset), 0) FROM {LIVE}.checkpoints),
       (SELECT version FROM {CONTROL}.active),
       (SELECT writes FROM {CONTROL}.catalog_mark)
"""


async def marks(conn: AsyncConnection[Any]) -> tuple[Any, ...]:
    """What a watcher polls: (feed head, sum of live checkpoints, active version, catalogue
    writes). The first moves with every change row, the next two with every folded batch or
    swap, the last with every catalogue write."""
    cur = await conn.execute(_MARKS_SQL)
    row = await cur.fetchone()
    return tuple(row) if row else ()


async def listen_for_news(conn: AsyncConnection[Any]) -> None:
    """Have `conn` (autocommit) notified of new change rows, folded batches, version swaps
    and catalogue writes. A hot standby refuses LISTEN (`ReadOnlySqlTransaction` or
    `FeatureNotSupported`)."""
    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
    await conn.execute(f"LISTEN {FOLDED_CHANNEL}")
    await conn.execute(f"LISTEN {VERSION_CHANNEL}")
    await conn.execute(f"LISTEN {CATALOG_CHANNEL}")
