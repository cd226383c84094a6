"""Reads that can travel together: a statement, its parameters and how to read its rows.

A batch's transaction starts with several independent reads (the active version, the
erasure epoch, the checkpoints, the dead letters, the ids and rows the batch touches). Sent
one by one, each costs a round trip to Postgres, and on a busy machine every round trip
waits for two processes to be scheduled (issue 21: ~20 of them made a batch's transaction).
`send` inside psycopg's pipeline mode (`conn.pipeline()`) queues a statement without waiting;
the block's end sends them all and reads every result in one round trip, and `Pending.get`
then reads the rows without I/O. Outside a pipeline `send` simply runs the statement.
Postgres still runs the statements one after the other, in order, in the same transaction:
the locks and snapshots are the same as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection, AsyncCursor, IsolationLevel, pq, sql
from psycopg.abc import Params

__all__ = ["Pending", "Read", "pipelined_transaction", "send"]

T = TypeVar("T")


@dataclass(frozen=True)
class Read(Generic[T]):
    """One statement and what its rows mean."""

    query: str | sql.SQL | sql.Composed
    params: Params | None
    decode: Callable[[list[Any]], T]

    async def run(self, conn: AsyncConnection[Any]) -> T:
        """Run it alone (one round trip) and read its rows."""
        return await (await send(conn, self)).get()


class Pending(Generic[T]):
    """A sent `Read`: its rows, once the pipeline that sent it is over (or at once)."""

    def __init__(self, cursor: AsyncCursor[Any], decode: Callable[[list[Any]], T]) -> None:
        self._cursor = cursor
        self._decode = decode

    async def get(self) -> T:
        return self._decode(await self._cursor.fetchall())


async def send(conn: AsyncConnection[Any], read: Read[T]) -> Pending[T]:
    return Pending(await conn.execute(read.query, read.params), read.decode)


@asynccontextmanager
async def pipelined_transaction(
    conn: AsyncConnection[Any], isolation: IsolationLevel
) -> AsyncIterator[None]:
    """A transaction of `conn` (autocommit, idle) in pipeline mode: BEGIN travels with the
    block's first read, COMMIT with its last statements. psycopg's `transaction()` inside a
    pipeline syncs as it starts and ends (three round trips of their own); this one sends
    BEGIN and COMMIT as statements. An error rolls back, then propagates; a failed COMMIT
    (a serialization failure found at commit) has ended the transaction already."""
    level = sql.SQL(isolation.name.replace("_", " "))
    try:
        async with conn.pipeline():
            await conn.execute(sql.SQL("BEGIN ISOLATION LEVEL {}").format(level))
            yield
            await conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.pgconn.transaction_status in _OPEN:
            await conn.rollback()
        raise


_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
