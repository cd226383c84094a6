"""What the fold has left to do, as Postgres knows it: checkpoints, open dead letters, and
the subscribers of regrouped products still queued for recomputation.

Read by the worker's gauges (`processors.gauges`) every few seconds and by `entitled status`;
small indexed reads only (the checkpoint table has one row per partition, the open dead
letters a partial index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql

from projections import offsets
from projections import schema as db

__all__ = ["OpenLetters", "Queued", "checkpoints", "open_letters", "regroup_queue"]


@dataclass(frozen=True)
class OpenLetters:
    """Dead letters still holding something back: poison events, events parked behind them."""

    by_state: dict[str, int] = field(default_factory=dict)  # poison, parked -> count
    customers: int = 0  # distinct keys (customers) parked

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


@dataclass(frozen=True)
class Queued:
    """Subscribers of regrouped products waiting to be recomputed (issue 19, point 5)."""

    customers: int = 0
    oldest_s: float = 0.0  # how long the oldest has waited (0: none waits)


async def checkpoints(conn: AsyncConnection[Any], topic: str) -> tuple[str, dict[int, int]]:
    """The active version and each partition's next offset to fold in it (absent: 0)."""
    active = await db.active_schema(conn)
    return active, await offsets.read(conn, active, topic)


async def open_letters(conn: AsyncConnection[Any], schema: str) -> OpenLetters:
    cur = await conn.execute(
        sql.SQL(
            "SELECT state, count(*) FROM {} WHERE state IN ('poison', 'parked') GROUP BY state"
        ).format(db.qualified(schema, "dead_letters"))
    )
    rows = await cur.fetchall()
    by_state = {"poison": 0, "parked": 0}
    by_state.update({state: int(n) for state, n in rows})
    return OpenLetters(by_state, await _parked_customers(conn, schema) if rows else 0)


async def _parked_customers(conn: AsyncConnection[Any], schema: str) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(DISTINCT key) FROM {} WHERE state IN ('poison', 'parked')").format(
            db.qualified(schema, "dead_letters")
        )
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def regroup_queue(conn: AsyncConnection[Any], schema: str) -> Queued:
    """The version's recompute queue: how many wait, and for how long the oldest has. Small
    but for a regroup's moments, and emptied a chunk per transaction by the workers."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8"
            " FROM {}"
        ).format(db.qualified(schema, "recompute_queue"))
    )
    row = await cur.fetchone()
    return Queued(int(row[0]), float(row[1])) if row else Queued()
