"""Between the consumer and the writer: commits batches whatever fails, and seeks back.

`BatchRunner.handle` is what an agent calls with each batch. It never raises: a Faust agent
whose body raises has its message acknowledged and skipped, which would lose events.

Failures are told apart by what retrying can do about them:
- transient (Postgres down or restarting, a serialization failure or deadlock, a pool
  timeout): the batch is retried with backoff until it commits; nothing is ever skipped;
- deterministic (Postgres refuses a value, the writer raises on an event): retrying cannot
  help, so the batch is split in halves until the failing event is alone; that event is
  dead-lettered (its customer parked behind it) and the rest commits. One customer's bad
  event never holds back another customer or partition;
- every event failing the same way is a bug in the writer, not bad input: when a few
  distinct customers failed with one error type within a window (`stall_window_s`), folding
  stops loudly (`entitled_worker_stalled`, /readyz 503, an error line per retry) instead of
  dead-lettering the whole log, and retries the batch slowly. Events that apply in between do
  not reset the count (issue 19, point 4): no-op events (unknown types, prices, previews)
  apply even while a recompute bug fails every customer, and a reset by them let the bug
  dead-letter every paying customer one by one. Only a commit after the stall clears it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from entitled.settings import Settings
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ApplyResult, ProjectionStore
from projections.types import Message

from .errors import WriterStalled
from .lag import HeadCache
from .metrics import WorkerMetrics

__all__ = ["BatchRunner", "Expected", "SeekFn", "SeekManyFn", "is_transient"]

log = logging.getLogger(__name__)

SeekFn = Callable[[int, int], Awaitable[None]]  # (partition, offset)
SeekManyFn = Callable[[dict[int, int]], Awaitable[None]]  # {partition: offset}

# SQLSTATE classes worth waiting out: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, object not in prerequisite state
# (lock not available), operator intervention (shutdown, query canceled), system error.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
_TRANSIENT_STATES = frozenset({"25006"})  # read-only transaction: a failover in progress
# Conflicts with a concurrent batch: retry soon.
_CONFLICTS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


# Transient failures that a smaller batch may escape (issue 19, point 5): statement timeout,
# out of memory, too many locks, serialization failure, deadlock. Not connection failures:
# Postgres down is not the batch's fault.
_OF_THE_BATCH = frozenset({"57014", "53200", "53400", "40001", "40P01"})


class _Repeats(Exception):
    """A batch failed transiently `shrink_after` times in a row in a way a smaller one may
    escape: `commit` splits it."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later may succeed."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return exc.sqlstate[:2] in _TRANSIENT_CLASSES or exc.sqlstate in _TRANSIENT_STATES
    return isinstance(
        exc, (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)
    )


class Expected:
    """The consumer's side: partitions we asked to seek, and the offset each must resume at.

    After a seek the stream still holds records read before it; they are dropped until the
    awaited offset arrives. A seek overtaken by a rebalance (or by Faust's own recovery, which
    seeks to Kafka's committed offsets) could leave a partition waiting for an offset that
    never comes: `stale` names those to seek again. Records re-delivered from before a seek
    (offsets not above the last one admitted, with no seek back in between) are dropped too.
    """

    def __init__(self, *, stale_after_s: float = 2.0) -> None:
        self.stale_after_s = stale_after_s
        self._awaiting: dict[int, tuple[int, float]] = {}
        self._held: set[int] = set()
        self._sought: set[int] = set()  # awaiting, and the seek has been made
        self._overtaken: set[int] = set()  # awaiting an offset Faust will drop: seek again
        self._last: dict[int, int] = {}  # partition -> offset last admitted since its seek

    def hold(self, partitions: Iterable[int]) -> None:
        """Drop every record of `partitions` until each is sought (`expect`): they were just
        assigned, and what Faust reads of them before the seek to the Postgres checkpoint
        starts at Kafka's committed offset, which is not ours (a fold from there was
        correct but read everything between the two again). Replaces the previous hold: a
        rebalance replaces the whole assignment."""
        self._held = set(partitions)

    def expect(self, partition: int, offset: int) -> None:
        """Drop records of `partition` until `offset` arrives (after a seek to it)."""
        self._held.discard(partition)
        self._last.pop(partition, None)
        self._sought.discard(partition)
        self._overtaken.discard(partition)
        self._awaiting[partition] = (offset, time.monotonic())

    def sought(self, partition: int) -> None:
        """The seek `expect` announced has been made: from now on a record past the awaited
        offset is one Faust delivered from before the seek (see `admit`)."""
        if partition in self._awaiting:
            self._sought.add(partition)

    def awaiting(self, partition: int) -> int | None:
        entry = self._awaiting.get(partition)
        return None if entry is None else entry[0]

    def admit(self, messages: Sequence[Message]) -> list[Message]:
        """The records that follow the seeks: from each awaited offset on."""
        batch: list[Message] = []
        arrived: dict[int, float] = {}
        for m in messages:
            if m.partition in self._held:
                continue
            awaited = self._awaiting.get(m.partition)
            if awaited is not None:
                if m.offset != awaited[0]:
                    if m.offset > awaited[0]:
                        # Fetched before the seek, delivered after it began: Faust's own
                        # filter may have moved its read offset to this one after the seek
                        # set it, and then drops the awaited record when the seek brings it
                        # (seen: 2 s failovers waiting for the stale re-seek). Seek again
                        # as soon as this seek is made (`stale`).
                        self._overtaken.add(m.partition)
                    continue
                del self._awaiting[m.partition]
                self._sought.discard(m.partition)
                arrived[m.partition] = time.monotonic() - awaited[1]
            elif m.offset <= self._last.get(m.partition, -1):
                # Read before the seek and delivered again after it (the seek to a
                # partition's checkpoint re-reads what Faust had fetched from there): the
                # store would skip it, unless its checkpoint had gone back meanwhile, and
                # then only a seek back may re-read it (a test rewinds one to see that).
                continue
            self._last[m.partition] = m.offset
            batch.append(m)
        if arrived:  # when a failover or a seek back is over, partition by partition
            log.info(
                "reading again after the seek: %s",
                ", ".join(f"{p} in {s:.2f}s" for p, s in sorted(arrived.items())),
            )
        return batch

    def stale(self) -> dict[int, int]:
        """Seeks made and overtaken (`admit`), or older than `stale_after_s`: partition ->
        offset to seek to again (each re-armed: `expect`)."""
        now = time.monotonic()
        out = {}
        for partition, (offset, since) in list(self._awaiting.items()):
            overtaken = partition in self._overtaken and partition in self._sought
            if overtaken or now - since > self.stale_after_s:
                self.expect(partition, offset)
                out[partition] = offset
        return out


class BatchRunner:
    """Commits batches through a `ProjectionStore`: retries, isolates poison, tracks seeks."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        *,
        store: ProjectionStore | None = None,
        metrics: WorkerMetrics | None = None,
        max_backoff_s: float = 5.0,
        stall_after_keys: int = 8,
        stall_window_s: float = 300.0,
        shrink_after: int = 5,
    ) -> None:
        self.pool = pool
        self.store = store or ProjectionStore(
            settings.topic, Policy.from_settings(settings), regroup_chunk=settings.regroup_chunk
        )
        self.metrics = metrics or WorkerMetrics()
        self.max_backoff_s = max_backoff_s
        self.stall_after_keys = stall_after_keys
        self.stall_window_s = stall_window_s
        self.shrink_after = shrink_after
        self.expected = Expected()
        self.active: str | None = None  # the active version's schema, as last seen
        self.stalled: str | None = None  # why folding stopped, while it is stopped
        self.heads = HeadCache()  # received-at of each batch's first records, for the lag
        # keys (customers) dead-lettered within the stall window: key -> (when, error type)
        self._failing: dict[str, tuple[float, str]] = {}
        self._opened = False
        self.draining = False  # SIGTERM: finish the batch in flight, start no other
        self._inflight: asyncio.Future[ApplyResult | None] | None = None

    async def _open(self) -> None:
        # Opened on first use, inside the running loop, without waiting for Postgres: the
        # retry loop handles a database that is not there yet.
        if not self._opened:
            self._opened = True
            await self.pool.open(wait=False)

    async def handle(self, messages: Sequence[Message], seek: SeekFn) -> ApplyResult | None:
        """Fold one batch. Shielded: a worker stopping (its agent cancelled) lets the batch
        in flight commit rather than roll it back; `drain` waits for it."""
        if self.draining:
            # Never return unfolded: Faust would acknowledge the batch and commit Kafka
            # offsets past the checkpoint. Wait for the agent's cancellation instead; the
            # next owner of the partitions reads them from the checkpoint.
            await asyncio.Event().wait()
        self._inflight = asyncio.ensure_future(self._handle(messages, seek))
        return await asyncio.shield(self._inflight)

    async def drain(self, timeout: float) -> None:
        """Start no new batch; wait up to `timeout` s for the one in flight to commit."""
        self.draining = True
        if self._inflight is not None and not self._inflight.done():
            log.info("stopping: waiting for the batch in flight")
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), timeout)
            except Exception:  # timed out or failed: it rolls back; the checkpoint says so
                log.warning("stopping: the batch in flight did not commit in %.0fs", timeout)

    async def _handle(self, messages: Sequence[Message], seek: SeekFn) -> ApplyResult | None:
        try:
            batch = self.expected.admit(messages)
            await self.reseek_stale(seek)  # overtaken seeks at once, not at the next tick
            if not batch:
                return None
            self.heads.note(batch)
            self.metrics.batch_size.observe(len(batch))
            with self.metrics.txn_seconds.time():
                result = await self.commit(batch)
            for partition, offset in result.gaps.items():
                log.warning("gap in partition %s: seeking back to %s", partition, offset)
                await self._seek(seek, partition, offset)
            return result
        except asyncio.CancelledError:
            raise
        except WriterStalled as exc:
            log.error("folding stopped: %s; retrying in %.0fs", exc, self.max_backoff_s)
            await self._read_again(messages, seek)
            await asyncio.sleep(self.max_backoff_s)
            return None
        except Exception:  # never let an exception escape into Faust (it would skip)
            log.exception("unexpected error folding a batch; it will be read again")
            await self._read_again(messages, seek)
            return None

    async def _seek(self, seek: SeekFn, partition: int, offset: int) -> None:
        self.expected.expect(partition, offset)
        try:
            await seek(partition, offset)
        except Exception:
            log.exception("seek failed; the next batch will detect the gap again")
        else:
            self.expected.sought(partition)

    async def _read_again(self, messages: Sequence[Message], seek: SeekFn) -> None:
        for partition in {m.partition for m in messages}:
            offset = min(m.offset for m in messages if m.partition == partition)
            await self._seek(seek, partition, offset)

    async def reseek_stale(self, seek: SeekFn) -> None:
        """Seek again where a seek was overtaken by a rebalance (see `Expected.stale`)."""
        again = self.expected.stale()
        if again:
            log.info("seeking again (overtaken or stale): %s", again)
        for partition, offset in again.items():
            try:
                await seek(partition, offset)
                self.expected.sought(partition)
            except Exception:
                log.exception("seek failed; it will be tried again")

    async def commit(self, batch: Sequence[Message], *, recompute: bool = True) -> ApplyResult:
        """Commit `batch`: transient failures retried, a deterministically failing event
        isolated and dead-lettered. Raises `WriterStalled` when everything fails."""
        try:
            result = await self._attempt(batch, recompute)
        except _Repeats:
            # the same batch keeps timing out or conflicting: commit it in halves (issue 19,
            # point 5); nothing is skipped, alone it is retried and reported (_attempt)
            half = len(batch) // 2
            result = await self.commit(batch[:half], recompute=recompute)
            result.add(await self.commit(batch[half:], recompute=recompute))
            return result
        except Exception as exc:
            if is_transient(exc):
                raise  # _attempt retries transient failures itself; this is a cancellation
            if len(batch) == 1:
                return await self._quarantine(batch[0], exc)
            self.metrics.isolations.inc()
            half = len(batch) // 2
            result = await self.commit(batch[:half], recompute=recompute)
            result.add(await self.commit(batch[half:], recompute=recompute))
            return result
        if (result.applied or result.duplicates) and self.stalled is not None:
            # the stalled batch commits: the writer works again (a fix was deployed)
            self._failing.clear()
            self.stalled = None
            self.metrics.stalled.set(0)
        self.metrics.count(result)
        return result

    async def _attempt(self, batch: Sequence[Message], recompute: bool) -> ApplyResult:
        """Apply `batch`, retrying transient failures with backoff until it commits.

        A failure of the batch itself (statement timeout, out of memory, serialization
        failure) that repeats `shrink_after` times raises `_Repeats` so that `commit` splits
        the batch; a single event that keeps failing so is retried for ever, but reported
        (an error line, `stalled`: /readyz false) instead of hiding behind a 200."""
        await self._open()
        delay = 0.05
        repeats = 0
        alone = False
        while True:
            try:
                if alone:
                    return await self._apply_alone(batch, recompute)
                async with self.pool.connection() as conn:
                    return await self.store.apply(conn, batch, recompute=recompute)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if getattr(exc, "sqlstate", None) in _OF_THE_BATCH:
                    repeats += 1
                    if repeats >= self.shrink_after and len(batch) > 1:
                        raise _Repeats from exc
                    if repeats == self.shrink_after:
                        m = batch[0]
                        self.stalled = (
                            f"the event at {m.partition}/{m.offset} (key {m.key}) alone fails"
                            f" again and again ({exc}); retrying"
                        )
                        self.metrics.stalled.set(1)
                        log.error("%s", self.stalled)
                    if repeats >= self.shrink_after and isinstance(exc, _CONFLICTS):
                        # it loses every conflict to other workers' batches: next time the
                        # others wait (a serialization failure cannot repeat for ever)
                        alone = self.store.schema is None
                self.metrics.retries.labels(type(exc).__name__).inc()
                if isinstance(exc, _CONFLICTS):
                    await asyncio.sleep(min(delay, 0.5))  # a concurrent batch: soon
                else:
                    log.warning("Postgres unavailable (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def _apply_alone(self, batch: Sequence[Message], recompute: bool) -> ApplyResult:
        """Apply `batch` while a second connection holds the active version's row: every
        other writer waits (`ProjectionStore.apply`, `alone_with`)."""
        log.warning(
            "applying the event at %s/%s alone: other batches wait meanwhile",
            batch[0].partition,
            batch[0].offset,
        )
        async with self.pool.connection() as holder, self.pool.connection() as conn:
            return await self.store.apply(conn, batch, recompute=recompute, alone_with=holder)

    async def _quarantine(self, message: Message, error: Exception) -> ApplyResult:
        key = message.key or ""
        kind = type(error).__name__
        now = time.monotonic()
        failing = {
            k: (when, what)
            for k, (when, what) in self._failing.items()
            if now - when <= self.stall_window_s
        }
        failing[key] = (now, kind)
        alike = sum(1 for _, what in failing.values() if what == kind)
        if self.stalled is not None or alike >= self.stall_after_keys:
            # while stalled nothing is dead-lettered: the stall holds until a commit
            self.stalled = (
                f"{alike} customers failed with {kind} within {self.stall_window_s:.0f}s "
                f"({error}); a writer bug, not bad input"
            )
            self.metrics.stalled.set(1)
            raise WriterStalled(self.stalled) from error
        log.error(
            "event at %s/%s (key %s) fails deterministically, dead-lettered: %r",
            message.partition,
            message.offset,
            message.key,
            error,
        )
        self._failing = failing
        while True:  # writing a dead letter can meet a transient failure too
            try:
                async with self.pool.connection() as conn:
                    result = await self.store.quarantine(conn, message, error)
                    self.metrics.count(result)
                    return result
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(self.max_backoff_s / 5)

    async def settle(self) -> int:
        """Recompute what regroups queued (`ProjectionStore.settle`), one bounded transaction
        at a time, until the queue is empty; how many customers. Transient failures are
        retried with backoff; what committed stays done. Runs beside the batches (the
        worker's timer): other customers keep folding meanwhile."""
        await self._open()
        delay = 0.05
        done = 0
        while True:
            try:
                async with self.pool.connection() as conn:
                    n = await self.store.settle(conn, chunks=1)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.retries.labels(type(exc).__name__).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if not n:
                return done
            done += n
            delay = 0.05

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

    async def resume(
        self,
        partitions: Sequence[int],
        seek_many: SeekManyFn,
        points: dict[int, int] | None = None,
    ) -> dict[int, int]:
        """Seek `partitions` to their checkpoints (`points` when the caller read them
        already) and drop records until they arrive."""
        if points is None:
            points = await self.resume_points(partitions)
        points = {p: points[p] for p in partitions}
        for partition, offset in points.items():
            self.expected.expect(partition, offset)
        try:
            # in one trip to the consumer's thread: each trip waits for a free worker of its
            # queue (two, one of them often in a fetch), so a seek per partition was slower
            await seek_many(points)
        except Exception:
            log.exception("seek failed; it will be made again (stale)")
        else:
            for partition in points:
                self.expected.sought(partition)
        return points

    def ready(self) -> bool:
        return self.stalled is None and not self.draining

    def render_metrics(self) -> bytes:
        return self.metrics.render()
