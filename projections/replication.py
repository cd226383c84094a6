"""How far a streaming replica is behind its primary: the read API's health check and lag.

Read only, and cheap (no table is read): the read API runs these every fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

__all__ = ["ReplicaLag", "lsn_position", "primary_lsn", "replica_lag"]

# Seconds: 0 when the replica replayed all it received (an idle primary writes nothing, and
# `now() - last replay` would grow for ever), else the age of the last replayed transaction.
# Bytes behind what it received; the read API adds what it has not received from the
# primary's current position when the primary answers.
_REPLICA_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
       coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint
"""

_PRIMARY_SQL = "SELECT pg_current_wal_lsn()::text"


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    in_recovery: bool  # False: not a replica (or promoted)
    replay_lsn: str | None
    seconds: float
    unreplayed_bytes: int  # received but not replayed yet


async def replica_lag(conn: AsyncConnection[Any]) -> ReplicaLag:
    cur = await conn.execute(_REPLICA_SQL)
    row = await cur.fetchone()
    assert row is not None
    in_recovery, lsn, seconds, unreplayed = row
    return ReplicaLag(bool(in_recovery), lsn, float(seconds or 0.0), int(unreplayed or 0))


async def primary_lsn(conn: AsyncConnection[Any]) -> str:
    """Where the primary's WAL is now."""
    cur = await conn.execute(_PRIMARY_SQL)
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


def lsn_position(lsn: str) -> int:
    """A WAL position `X/Y` (hex) as a byte offset: differences are bytes of WAL."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)
