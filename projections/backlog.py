"""What the fold has left to do, as Postgres knows it: checkpoints and open dead letters.

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

__all__ = ["OpenLetters", "checkpoints", "open_letters"]


@dataclass(frozen=True)
class OpenLetters:
    """Dead letters still holding something back: poison events, events parked behind them."""

    by_state: dict[str, int] = field(default_factory=dict)  # poison, parked -> count
    customers: int = 0  # distinct keys (customers) parked

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


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
