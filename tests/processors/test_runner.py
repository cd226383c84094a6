"""BatchRunner as a pure unit: a fake store and a fake seek (the real writer has its own
contract tests). What it must do: retry transient failures, isolate a deterministic one to
the one event that causes it, stop loudly when everything fails, follow its seeks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from entitled.settings import Settings
from processors.errors import WriterStalled
from processors.runner import BatchRunner, Expected, is_transient
from projections.offsets import continuity
from projections.store import ApplyResult
from projections.types import Message


class FakePool:
    async def open(self, wait: bool = True) -> None:
        pass

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


class FakeStore:
    """Applies batches unless they hold a bad offset; fails transiently `flaky` times."""

    schema: str | None = None  # the live version

    def __init__(self, bad: set[int], *, flaky: int = 0, error: type[Exception] = ValueError):
        self.bad, self.flaky, self.error = bad, flaky, error
        self.applied: list[int] = []
        self.quarantined: list[int] = []
        self.attempts = 0

    async def apply(self, conn: Any, batch: Sequence[Message], *, recompute: bool) -> ApplyResult:
        self.attempts += 1
        if self.flaky:
            self.flaky -= 1
            raise psycopg.errors.SerializationFailure("conflict")
        if any(m.offset in self.bad for m in batch):
            raise self.error("refused")
        self.applied += [m.offset for m in batch]
        return ApplyResult(applied=len(batch))

    async def quarantine(self, conn: Any, m: Message, error: BaseException) -> ApplyResult:
        self.quarantined.append(m.offset)
        return ApplyResult(poison=1)


def runner(store: FakeStore, **kw: Any) -> BatchRunner:
    return BatchRunner(Settings(), FakePool(), store=store, max_backoff_s=0.01, **kw)  # type: ignore[arg-type]


def batch(n: int, keys: int = 1) -> list[Message]:
    return [Message(0, i, f"cus_{i % keys}", b"{}") for i in range(n)]


async def test_a_deterministic_failure_is_isolated_to_its_event() -> None:
    store = FakeStore(bad={37})
    result = await runner(store).commit(batch(100, keys=100))
    assert store.quarantined == [37]
    assert sorted(store.applied) == [i for i in range(100) if i != 37]
    assert (result.applied, result.poison) == (99, 1)


async def test_transient_failures_are_retried_never_isolated() -> None:
    store = FakeStore(bad=set(), flaky=3)
    result = await runner(store).commit(batch(10))
    assert store.attempts == 4 and store.quarantined == [] and result.applied == 10


async def test_every_event_failing_the_same_way_stalls_instead_of_dead_lettering() -> None:
    store = FakeStore(bad=set(range(50)))
    r = runner(store, stall_after_keys=4)
    with pytest.raises(WriterStalled):
        await r.commit(batch(50, keys=50))
    assert len(store.quarantined) == 3 and not r.ready()
    store.bad = set()  # fixed (a deploy): the next success clears the stall
    await r.commit(batch(50, keys=50)[3:])
    assert r.ready()


async def test_one_customers_poison_does_not_stall() -> None:
    store = FakeStore(bad={0, 1, 2, 3, 4, 5})  # one key: the rest of it is parked, not poison
    r = runner(store, stall_after_keys=2)
    await r.commit(batch(6, keys=1))
    assert r.ready() and len(store.quarantined) == 6


async def test_handle_seeks_back_and_drops_records_until_the_awaited_offset() -> None:
    seeks: list[tuple[int, int]] = []

    async def seek(partition: int, offset: int) -> None:
        seeks.append((partition, offset))

    class Gappy(FakeStore):
        async def apply(self, conn: Any, b: Sequence[Message], *, recompute: bool) -> ApplyResult:
            return ApplyResult(gaps={0: 2})

    r = runner(Gappy(set()))
    await r.handle([Message(0, 5, "k", b"{}")], seek)
    assert seeks == [(0, 2)] and r.expected.awaiting(0) == 2
    assert r.expected.admit([Message(0, 6, "k", b"")]) == []  # read before the seek
    assert [m.offset for m in r.expected.admit([Message(0, 2, "k", b"")])] == [2]
    assert r.expected.awaiting(0) is None


def test_assigned_partitions_are_held_until_sought() -> None:
    e = Expected()
    e.hold([0, 1])
    assert e.admit([Message(0, 7, "k", b""), Message(2, 1, "k", b"")]) == [Message(2, 1, "k", b"")]
    e.expect(0, 3)  # the seek to the checkpoint
    assert [m.offset for m in e.admit([Message(0, 3, "k", b""), Message(1, 0, "k", b"")])] == [3]
    e.hold([1])  # a rebalance: the new assignment replaces the hold
    assert e.admit([Message(0, 4, "k", b"")]) == [Message(0, 4, "k", b"")]
    assert e.stale() == {}


def test_a_seek_overtaken_by_records_read_before_it_is_reissued_at_once() -> None:
    e = Expected()
    e.expect(0, 3)
    assert e.admit([Message(0, 1, "k", b"")]) == [] and e.stale() == {}  # Faust's earlier seek
    # past the awaited offset while the seek is being made: it may have moved Faust's read
    # offset past the one the seek set; seek again once this seek is made, not before
    assert e.admit([Message(0, 9, "k", b"")]) == [] and e.stale() == {}
    e.sought(0)
    assert e.stale() == {0: 3} and e.stale() == {}  # re-armed
    e.sought(0)
    assert e.admit([Message(0, 2, "k", b"")]) == [] and e.stale() == {}  # below: dropped
    assert e.admit([Message(0, 10, "k", b"")]) == []  # fetched before, delivered after
    assert e.stale() == {0: 3} and e.stale() == {}
    e.sought(0)
    assert [m.offset for m in e.admit([Message(0, 3, "k", b"")])] == [3]
    assert e.stale() == {}


def test_records_delivered_again_after_the_seek_are_dropped_until_a_seek_back() -> None:
    e = Expected()
    e.expect(0, 2)
    assert [m.offset for m in e.admit([Message(0, o, "k", b"") for o in (2, 3)])] == [2, 3]
    # the seek re-reads what was fetched before it: no second delivery reaches the store
    assert [m.offset for m in e.admit([Message(0, o, "k", b"") for o in (2, 3, 4)])] == [4]
    e.expect(0, 3)  # a seek back
    assert [m.offset for m in e.admit([Message(0, o, "k", b"") for o in (3, 4)])] == [3, 4]


def test_stale_seeks_are_reissued() -> None:
    e = Expected(stale_after_s=0.0)
    e.expect(3, 10)
    assert e.stale() == {3: 10}


def test_continuity_keeps_what_follows_the_checkpoint() -> None:
    ms = [Message(0, o, None, b"") for o in (3, 4, 5, 7)] + [Message(1, 0, None, b"")]
    c = continuity(ms, {0: 4})
    assert [(m.partition, m.offset) for m in c.fresh] == [(0, 4), (0, 5), (1, 0)]
    assert (c.below_checkpoint, c.gaps, c.next_offsets) == (1, {0: 6}, {0: 6, 1: 1})


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.OperationalError("connection lost"), True),
        (psycopg.errors.ProgramLimitExceeded(), False),  # an index row too large: bad input
        (psycopg.errors.NumericValueOutOfRange(), False),
        (psycopg.errors.UntranslatableCharacter(), False),
        (psycopg.errors.UniqueViolation(), False),
        (ValueError("writer bug"), False),
    ],
)
def test_errors_are_classified_by_what_retrying_can_do(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


async def test_a_drain_lets_the_batch_in_flight_commit_and_starts_no_other() -> None:
    """SIGTERM: the agent is cancelled mid-batch, yet the batch commits (shielded) and
    `drain` returns once it has; a later batch never starts; not ready from the start."""
    gate = asyncio.Event()

    class Slow(FakeStore):
        async def apply(self, conn: Any, b: Sequence[Message], *, recompute: bool) -> ApplyResult:
            await gate.wait()
            return await super().apply(conn, b, recompute=recompute)

    async def seek(partition: int, offset: int) -> None:
        pass

    store = Slow(set())
    r = runner(store)
    agent = asyncio.create_task(r.handle(batch(3), seek))
    await asyncio.sleep(0.01)
    draining = asyncio.create_task(r.drain(timeout=5))
    await asyncio.sleep(0.01)
    assert not r.ready()
    agent.cancel()  # Faust stops the agent
    gate.set()
    await draining
    assert store.applied == [0, 1, 2]
    later = asyncio.create_task(r.handle([Message(0, 3, "k", b"{}")], seek))
    await asyncio.sleep(0.05)
    assert not later.done() and store.applied == [0, 1, 2]  # held until cancelled
    later.cancel()


class TimesOut(FakeStore):
    """A statement timeout for any batch over `most` events; `alone` more times for a
    single one (a statement that takes too long whatever the size, for a while)."""

    def __init__(self, most: int, alone: int = 0) -> None:
        super().__init__(set())
        self.most, self.alone, self.ready_seen = most, alone, True

    async def apply(self, conn: Any, batch: Sequence[Message], *, recompute: bool) -> ApplyResult:
        self.attempts += 1
        if len(batch) > self.most:
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        if len(batch) == 1 and self.alone:
            self.alone -= 1
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        self.applied += [m.offset for m in batch]
        return ApplyResult(applied=len(batch))


async def test_a_batch_that_keeps_timing_out_is_committed_in_smaller_parts() -> None:
    """Issue 19, point 5: repeats shrink the batch; nothing is skipped or dead-lettered."""
    store = TimesOut(most=8)
    r = runner(store, shrink_after=3)
    result = await r.commit(batch(64, keys=64))
    assert sorted(store.applied) == list(range(64)) and store.quarantined == []
    assert result.applied == 64 and r.ready()


async def test_an_event_that_keeps_timing_out_alone_is_reported_and_retried() -> None:
    store = TimesOut(most=1, alone=6)
    r = runner(store, shrink_after=3)
    seen: list[bool] = []
    original = store.apply

    async def watching(conn: Any, b: Sequence[Message], *, recompute: bool) -> ApplyResult:
        seen.append(r.ready())
        return await original(conn, b, recompute=recompute)

    store.apply = watching  # type: ignore[method-assign]
    result = await r.commit(batch(1))
    assert result.applied == 1 and store.quarantined == []  # retried until it committed
    assert False in seen  # reported (/readyz false) while it failed alone
    assert r.ready()  # and cleared once it committed


class LosesConflicts(FakeStore):
    """Every attempt of one event conflicts with other workers' batches (a serialization
    failure), unless it is applied alone (`alone_with`: the others wait meanwhile)."""

    def __init__(self) -> None:
        super().__init__(set())
        self.alone: list[bool] = []

    async def apply(  # type: ignore[override]
        self, conn: Any, batch: Sequence[Message], *, recompute: bool, alone_with: Any = None
    ) -> ApplyResult:
        self.attempts += 1
        self.alone.append(alone_with is not None)
        if alone_with is None or alone_with is conn:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        self.applied += [m.offset for m in batch]
        return ApplyResult(applied=len(batch))


async def test_an_event_that_loses_every_conflict_is_applied_alone() -> None:
    """A lone event that failed `shrink_after` times on serialization conflicts is applied
    with the others held off (a second connection), not retried for ever (a chaos run saw a
    regroup lose to the other worker's steady commits for five minutes)."""
    store = LosesConflicts()
    r = runner(store, shrink_after=3)
    result = await asyncio.wait_for(r.commit(batch(2)), 30)  # split first, then each alone
    assert result.applied == 2 and sorted(store.applied) == [0, 1]
    assert store.quarantined == [] and r.ready()
    # the batch of two: 3 attempts; each half: 3 attempts, then alone at once
    assert store.alone == [False] * 3 + [False] * 3 + [True] + [False] * 3 + [True]
