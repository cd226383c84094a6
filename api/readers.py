"""Where the read API reads: the primary alone, or streaming replicas in turn.

With `ENTITLED_READ_DATABASE_URL` set, searches, entitlements, the customer list and
`min_event` waits go to the replicas, round robin; everything that writes or must see the
primary (the catalogue, the change feed, refresh) keeps using the primary's pool. Without it
the primary is the only target and nothing changes.

Each target has its own pool and its own change watcher (`api.watcher`: on a replica
it polls, as NOTIFY does not reach standbys), so a `min_event` read waits on the very
replica that answers it. A health loop checks every replica every `check_s` on a dedicated
connection and measures its replay lag; a replica that fails the check is skipped until it
passes again. A read that fails on a replica with a connection-class error (stopped, shut
down, recovery conflict) marks it unhealthy and is retried on the next target at once: reads
are idempotent, and the client should not see a replica going away. When no replica is
healthy the primary serves: read-only degradation works the other way round too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.watcher import Watcher
from projections import replication, search

__all__ = ["FAILOVER_ERRORS", "Readers", "Target"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that say "this server cannot answer now", not "this read is wrong": worth the
# next target. 40001 is also what a replica raises for a read cancelled by replay. A replica
# that has not replayed a migration yet lacks a table, schema or column the primary has: on a
# replica (only) that is lag too.
FAILOVER_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    PoolTimeout,
)
REPLICA_BEHIND_ERRORS: tuple[type[Exception], ...] = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedColumn,
)

REPLICA_POOL_TIMEOUT_S = 1.0  # a replica that gives no connection in 1 s: try the next
PRIMARY_POOL_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2


class Target:
    """One database the API reads from: its pool, its watcher, its health and lag."""

    def __init__(
        self,
        name: str,
        url: str,
        pool: AsyncConnectionPool[Any],
        watcher: Watcher,
        *,
        primary: bool,
    ) -> None:
        self.name = name
        self.url = url
        self.pool = pool
        self.watcher = watcher
        self.primary = primary
        self.healthy = primary  # a replica serves once its first check passed
        self.reads = 0
        self.failovers = 0  # reads that failed here and went on to another target
        self.lag_seconds: float | None = None
        self.lag_bytes: int | None = None
        self.replay_lsn: str | None = None

    @property
    def address(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname or ''}:{parts.port or 5432}"

    @property
    def pool_timeout(self) -> float:
        return PRIMARY_POOL_TIMEOUT_S if self.primary else REPLICA_POOL_TIMEOUT_S

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with self.pool.connection(timeout=self.pool_timeout) as conn:
            yield conn


class Readers:
    """The primary and the replicas; `run(read)` runs a read on the next healthy one."""

    def __init__(self, primary: Target, replicas: Sequence[Target], *, check_s: float = 0.5):
        self.primary = primary
        self.replicas = list(replicas)
        self.check_s = check_s
        self._turn = 0
        self._checks: dict[str, AsyncConnection[TupleRow]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def targets(self) -> list[Target]:
        return [self.primary, *self.replicas]

    def pick(self) -> Target:
        """The next healthy replica in turn; the primary when there is none."""
        healthy = [t for t in self.replicas if t.healthy]
        if not healthy:
            return self.primary
        self._turn += 1
        return healthy[self._turn % len(healthy)]

    def _order(self) -> list[Target]:
        first = self.pick()
        rest = [t for t in self.replicas if t.healthy and t is not first]
        return [first, *rest, *([] if first is self.primary else [self.primary])]

    def answered(self) -> Target:
        """A read answered without a database trip on the next target's behalf (the read
        model, current with the feed): counted as `run` counts a read that succeeds there."""
        target = self.pick()
        target.reads += 1
        return target

    async def run(self, read: Callable[[Target], Awaitable[T]], *, count: bool = True) -> T:
        """`read(target)` on the next target; on a failover error on a replica, the replica
        is skipped until its health check passes and the read runs on the next one.
        `count=False`: not a read a request asked for (the read model following the feed),
        left out of the target's `reads`."""
        for target in self._order():
            try:
                result = await read(target)
            except (*FAILOVER_ERRORS, *REPLICA_BEHIND_ERRORS) as exc:
                if target.primary:
                    raise
                log.warning("replica %s failed a read (%s): next target", target.name, exc)
                target.healthy = False
                target.failovers += 1
                continue
            target.reads += count
            return result
        raise AssertionError("unreachable: the primary is always the last target")

    # -- life cycle and health ---------------------------------------------------------------

    async def open(self) -> None:
        """Open the replicas' pools and watchers (the primary's belong to the app), run one
        health round so that healthy replicas serve from the first request, then keep
        checking in the background."""
        for target in self.replicas:
            await target.pool.open(wait=False)
            target.watcher.start()
        if self.replicas:
            await self.check()
            self._task = asyncio.create_task(self._loop(), name="entitled-api-readers")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for conn in self._checks.values():
            await conn.close()
        self._checks.clear()
        for target in self.replicas:
            await target.watcher.stop()
            await target.pool.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            await self.check()

    async def check(self) -> None:
        """One health round: each replica's state and lag, against the primary's position."""
        head = await self._primary_position()
        await asyncio.gather(*(self._check(t, head) for t in self.replicas))

    async def _primary_position(self) -> int | None:
        try:
            async with self.primary.pool.connection(timeout=0.5) as conn:
                return replication.lsn_position(await replication.primary_lsn(conn))
        except FAILOVER_ERRORS:
            return None  # the primary is down: replicas only know what they received

    async def _check(self, target: Target, head: int | None) -> None:
        started = time.monotonic()
        try:
            conn = self._checks.get(target.name)
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    target.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name="entitled-api-health",
                )
                self._checks[target.name] = conn
            lag = await asyncio.wait_for(replication.replica_lag(conn), CONNECT_TIMEOUT_S)
            # A replica of a database migrated a moment ago may not have replayed it yet.
            ready = await asyncio.wait_for(search.is_ready(conn), CONNECT_TIMEOUT_S)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            if target.healthy:
                log.warning("replica %s failed its health check: %s", target.name, exc)
            target.healthy = False
            stale = self._checks.pop(target.name, None)
            if stale is not None:
                await stale.close()
            return
        target.lag_seconds = lag.seconds
        target.replay_lsn = lag.replay_lsn
        if head is not None and lag.replay_lsn is not None:
            target.lag_bytes = max(0, head - replication.lsn_position(lag.replay_lsn))
        else:
            target.lag_bytes = lag.unreplayed_bytes
        if not ready:
            if target.healthy:
                log.warning("replica %s has no migrated schema (yet): skipped", target.name)
            target.healthy = False
            return
        if not target.healthy:
            took_ms = 1000 * (time.monotonic() - started)
            log.info("replica %s passes its health check (%.0f ms)", target.name, took_ms)
        target.healthy = True
