"""The workers of a consumer group, as Postgres sees them: who is alive, at once.

Each running worker holds a session-level advisory lock named for its group instance id
(Kafka static membership, `processors/membership.py`) on a connection of its own, and a row
in `worker_members` saying which Kafka member id it joined as. A worker that dies (SIGKILL,
a crash) closes its connection with it, and Postgres releases the lock the moment it sees the
session end: a survivor that finds the lock free knows the copy is gone, long before Kafka's
session timeout says so, and can remove exactly that member (the row's member id) from the
group. The lock is also what keeps two running copies from using one instance id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from .schema import CONTROL

__all__ = ["Peer", "claim", "forget", "joined", "leave", "peers", "release"]


def _lock_name(group: str, instance_id: str) -> str:
    return f"entitled.worker:{group}/{instance_id}"


@dataclass(frozen=True)
class Peer:
    instance_id: str
    member_id: str  # '' until the peer has joined the group
    free: bool  # its lock is free: the copy is gone (we hold the lock now: `release` it)


async def claim(
    conn: AsyncConnection[Any], group: str, instance_id: str, host: str, pid: int
) -> bool:
    """Take `instance_id`'s lock on `conn` (autocommit) and record the copy; False when a
    running copy holds it (or a survivor, for a moment, while it removes a dead one)."""
    cur = await conn.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s))", (_lock_name(group, instance_id),)
    )
    row = await cur.fetchone()
    if not (row and row[0]):
        return False
    await conn.execute(
        f"INSERT INTO {CONTROL}.worker_members (consumer_group, instance_id, host, pid)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, instance_id) DO UPDATE"
        " SET member_id = '', host = excluded.host, pid = excluded.pid, started_at = now()",
        (group, instance_id, host, pid),
    )
    return True


async def joined(conn: AsyncConnection[Any], group: str, instance_id: str, member_id: str) -> None:
    """The copy holding `instance_id` joined the group as `member_id`."""
    await conn.execute(
        f"UPDATE {CONTROL}.worker_members SET member_id = %s"
        " WHERE consumer_group = %s AND instance_id = %s",
        (member_id, group, instance_id),
    )


async def peers(conn: AsyncConnection[Any], group: str, me: str) -> list[Peer]:
    """The other recorded copies of `group`, each with whether its lock is free. A free
    lock is taken by this call (so that two survivors never remove the same copy, and a
    restarting copy waits for the removal to finish): `forget` or `release` each."""
    cur = await conn.execute(
        "SELECT instance_id, member_id, pg_try_advisory_lock("
        "hashtext('entitled.worker:' || consumer_group || '/' || instance_id))"
        f" FROM {CONTROL}.worker_members WHERE consumer_group = %s AND instance_id <> %s",
        (group, me),
    )
    return [Peer(str(i), str(m), bool(f)) for i, m, f in await cur.fetchall()]


async def release(conn: AsyncConnection[Any], group: str, instance_id: str) -> None:
    """Give back the lock of a free peer that `peers` took."""
    await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_lock_name(group, instance_id),))


async def forget(conn: AsyncConnection[Any], group: str, peer: Peer) -> None:
    """The dead `peer` is out of the group: drop its row (unless a new copy has claimed its
    id meanwhile: it cannot have, we hold the lock, but the row says so) and its lock."""
    await conn.execute(
        f"DELETE FROM {CONTROL}.worker_members"
        " WHERE consumer_group = %s AND instance_id = %s AND member_id = %s",
        (group, peer.instance_id, peer.member_id),
    )
    await release(conn, group, peer.instance_id)


async def leave(conn: AsyncConnection[Any], group: str, instance_id: str) -> None:
    """A clean stop: the row goes; the lock goes with the connection."""
    await conn.execute(
        f"DELETE FROM {CONTROL}.worker_members WHERE consumer_group = %s AND instance_id = %s",
        (group, instance_id),
    )
