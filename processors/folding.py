"""Between the consumer and the writer: retries, backoff, and seeking back on gaps.

`Folder.handle` is what an agent calls with each batch. It never raises: a Faust agent whose
body raises has its message acknowledged and skipped, which would lose events. Transient
failures (Postgres down, serialization failures) are retried with backoff until they
succeed; nothing is ever skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from entitled.settings import Settings
from projections import schema as db
from projections.entitlements import Policy
from projections.store import ApplyResult, Message, ProjectionStore

log = logging.getLogger(__name__)

SeekFn = Callable[[int, int], Awaitable[None]]  # (partition, offset)

# Conflicts with a concurrent batch: retry at once (with a little jitter-free backoff).
_CONFLICTS = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Read and write jsonb with orjson: the mirrored rows are JSON, and the stdlib's json
    was the writer's largest single cost."""
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)


def make_pool(
    database_url: str, *, max_size: int = 4, name: str = "entitled"
) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        check=AsyncConnectionPool.check_connection,
        configure=configure,
        kwargs={"autocommit": True},
        reconnect_timeout=0,  # keep trying for ever: Postgres may be down for a while
        # Give up a checkout after a few seconds: the caller's retry loop backs off and tries
        # again, instead of one request waiting 30 s while Postgres is already back.
        timeout=5.0,
        max_idle=60.0,
    )


class Folder:
    """Feeds batches to a `ProjectionStore` until they are committed; tracks seeks."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        *,
        store: ProjectionStore | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.store = store or ProjectionStore(settings.topic, Policy.from_settings(settings))
        self.max_backoff_s = max_backoff_s
        # partition -> offset we asked the consumer to seek to; records of that partition
        # are dropped until that offset arrives (the stream still holds pre-seek records).
        self.awaiting: dict[int, tuple[int, float]] = {}
        self._opened = False
        self.active: str | None = None  # the active version's schema, as last seen

    def expect(self, partition: int, offset: int) -> None:
        """Drop records of `partition` until `offset` arrives (after a seek to it)."""
        self.awaiting[partition] = (offset, time.monotonic())

    async def _open(self) -> None:
        # Opened on first use, inside the running loop, without waiting for Postgres: the
        # retry loop below handles a database that is not there yet.
        if not self._opened:
            self._opened = True
            await self.pool.open(wait=False)

    async def handle(self, messages: Sequence[Message], seek: SeekFn) -> ApplyResult | None:
        try:
            batch = self._after_seeks(messages)
            if not batch:
                await self.reseek_stale(seek)
                return None
            result = await self.apply_until_committed(batch)
            for partition, offset in result.gaps.items():
                log.warning("gap in partition %s: seeking back to %s", partition, offset)
                self.expect(partition, offset)
                await seek(partition, offset)
            return result
        except asyncio.CancelledError:
            raise
        except Exception:  # never let an exception escape into Faust (it would skip)
            log.exception("unexpected error folding a batch; it will be read again")
            for partition in {m.partition for m in messages}:
                offset = min(m.offset for m in messages if m.partition == partition)
                self.expect(partition, offset)
                await _quietly(seek(partition, offset))
            return None

    def _after_seeks(self, messages: Sequence[Message]) -> list[Message]:
        batch: list[Message] = []
        for m in messages:
            awaited = self.awaiting.get(m.partition)
            if awaited is not None:
                if m.offset != awaited[0]:
                    continue
                del self.awaiting[m.partition]
            batch.append(m)
        return batch

    async def reseek_stale(self, seek: SeekFn) -> None:
        # A seek that was overtaken by a rebalance can leave us waiting for an offset that
        # never comes: ask again after a while.
        now = time.monotonic()
        for partition, (offset, since) in list(self.awaiting.items()):
            if now - since > 5:
                self.awaiting[partition] = (offset, now)
                await _quietly(seek(partition, offset))

    async def apply_until_committed(
        self, batch: Sequence[Message], *, recompute: bool = True
    ) -> ApplyResult:
        """Apply `batch`, retrying transient failures with backoff until it commits."""
        await self._open()
        delay = 0.05
        while True:
            try:
                async with self.pool.connection() as conn:
                    return await self.store.apply(conn, batch, recompute=recompute)
            except _CONFLICTS:
                await asyncio.sleep(min(delay, 0.5))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("Postgres unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            except psycopg.Error as exc:
                log.exception("database error (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def version_changed(self) -> bool:
        """True when the active version is not the one this worker last saw (a replay swap
        or a rollback): the caller then re-seeks every partition to the new checkpoints,
        even if no new record arrives to reveal the gap."""
        await self._open()
        async with self.pool.connection() as conn:
            active = await db.active_schema(conn)
        changed = active != self.active
        self.active = active
        return changed

    async def resume_points(self, partitions: Sequence[int]) -> dict[int, int]:
        """Where each partition resumes: its Postgres checkpoint (0 when it has none)."""
        await self._open()
        async with self.pool.connection() as conn:
            self.active, checkpoints = await self.store.checkpoints(conn)
        return {p: checkpoints.get(p, 0) for p in partitions}


async def _quietly(aw: Awaitable[object]) -> None:
    try:
        await aw
    except Exception:
        log.exception("seek failed; the next batch will detect the gap again")
