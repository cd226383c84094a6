"""Replay: rebuild the projections from offset 0 of the log into a new version, then swap.

The rebuild runs the same fold rules and the same writer (`ProjectionStore`) as the live
worker; only the source (a plain aiokafka reader instead of the Faust agent) and the target
schema change. The live version keeps serving and the live worker keeps folding meanwhile.
The statements on versions (create, swap, compare, drop) are in `projections.versions`.

Before the swap the swap gate (`swap_gate`) compares the new version with the live one at
one log position: the active row is locked (the live worker waits between two batches), the
build catches up to the log end, and an empty log or too many customers losing entitlements
refuse the swap unless forced. The swap then redefines the `live` views and the active
version in the same transaction. Each version has its own checkpoints, so after the swap the
live worker's next batch finds the new version's checkpoint: if the replay stopped short of
what the worker had read, the worker sees a gap and seeks back; if it went further, the
worker skips what is covered. No event is lost or applied twice across the swap.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from entitled.kafka import client_options
from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import schema as db
from projections import versions
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

from . import swap_gate
from .errors import ReplayError, SwapRefused
from .merged_log import InOrder
from .opening import open_message
from .pool import configure, make_pool
from .runner import BatchRunner

__all__ = [
    "ReplayReport",
    "build",
    "list_versions",
    "read_log",
    "replay",
    "roll_back",
    "swap_ready",
]

log = logging.getLogger(__name__)

REPLAY_BATCH = 5000
_FETCH_BYTES = 1024 * 1024  # per partition and fetch (see `read_log`)
_KEYS = 1000  # data keys a build keeps unwrapped (see `_fold_range`)
_KEPT = 1000  # differences a report holds (the rest are counted, or given to `each`)

Difference = dict[str, Any]  # one customer's, as `projections.versions.differences` has it


@dataclass
class ReplayReport:
    version: int
    schema: str
    events: int = 0
    seconds: float = 0.0
    swapped: bool = False
    # The first `_KEPT` customers (by id) whose entitlements differ from the live version,
    # and how many differ in all: a replay into an empty live version differs everywhere.
    differences: list[Difference] = field(default_factory=list)
    differing: int = 0
    refusal: str | None = None  # why the swap gate refuses this version (None: it may swap)
    behind: int = 0  # a dry run: events of the log past the position both were compared at

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _connect(settings: Settings) -> Any:
    """An autocommit connection (an awaitable async context manager)."""
    assert settings.database_url
    return psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)


async def read_log(
    settings: Settings,
    topic: str,
    start: dict[int, int],
    stop: dict[int, int],
    *,
    keyring: Keyring,
    batch: int = REPLAY_BATCH,
    only_key: str | None = None,
    in_order: bool = False,
) -> AsyncGenerator[list[Message], None]:
    """Batches of records of `topic` from `start` up to (excluding) `stop` per partition,
    opened with `keyring` (a forgotten customer's records come as `forgotten` messages);
    `in_order`: merged across partitions in the order they were written (a build's history
    needs it, `processors.merged_log`), else as fetched."""
    todo = {p: o for p, o in stop.items() if o > start.get(p, 0)}
    if not todo:
        return
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        # What a fetch returns stays in memory until it is folded (the in-order merge holds
        # one fetch per partition): 8 MB a partition made the replay's peak RSS ~115 MB
        # higher (read alone, 20k events, 8 partitions: 212 MB vs 98) for no faster read
        # (14.9k vs 15.1k ev/s); below 1 MB the read slows (256 KB: 2.8k ev/s).
        max_partition_fetch_bytes=_FETCH_BYTES,
        fetch_max_bytes=8 * _FETCH_BYTES,
    )
    merge = InOrder() if in_order else None
    taken: list[Message] = []  # merged, not yet a whole batch
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, start.get(p, 0))
        while todo or (merge is not None and merge.pending()):
            fetch = list(todo) if merge is None else merge.needs(todo)
            records = (
                await consumer.getmany(*[tps[p] for p in fetch], timeout_ms=1000, max_records=batch)
                if fetch
                else {}
            )
            out: list[Message] = []
            for tp, msgs in records.items():
                end = todo.get(tp.partition)
                if end is None:
                    continue
                for r in msgs:
                    if r.offset >= end:
                        break
                    key = r.key.decode("utf-8", "replace") if r.key is not None else None
                    if only_key is None or key == only_key:
                        message = await open_message(
                            keyring,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            r.headers,
                            timestamp_ms=r.timestamp,
                        )
                        if merge is None:
                            out.append(message)
                        else:
                            merge.add(r.timestamp, message)
                if msgs and msgs[-1].offset + 1 >= end:
                    del todo[tp.partition]
                    consumer.pause(tp)
            if merge is not None:
                # whole batches: a fetch of 1 MB a partition holds a few hundred records, and
                # `take` stops at the first partition it must fetch again; folded as they
                # came, batches averaged 277 records (each a transaction of its own waves)
                taken.extend(merge.take(batch - len(taken), todo))
                done = not todo and not merge.pending()
                out, taken = (taken, []) if len(taken) >= batch or done else ([], taken)
            if out:
                yield out
    finally:
        await consumer.stop()


async def _one_ahead(
    batches: AsyncGenerator[list[Message], None],
) -> AsyncIterator[list[Message]]:
    """`batches`, the next one read (fetched, opened, merged) in a task of its own while the
    caller folds the current one: the reader's work then overlaps the fold's waits on
    Postgres instead of following them. What the reader raises is raised here, in order."""
    ahead = asyncio.ensure_future(anext(batches))
    try:
        while True:
            try:
                batch = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(batches))
            yield batch
    finally:  # the caller stopped early or failed: the read in flight stops too
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
        await batches.aclose()


async def _fold_range(
    settings: Settings,
    schema: str,
    start: dict[int, int],
    stop: dict[int, int],
    *,
    recompute: bool,
    bar: tqdm[Any] | None = None,
) -> int:
    """Fold the records between `start` and `stop` into `schema` with the worker's writer."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    pool = make_pool(settings.database_url, max_size=2, name="replay")
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    runner = BatchRunner(settings, pool, store=store)
    read = 0
    # A log holds each subject's events close together, so a build needs few data keys at
    # once; each cached key is an AES-GCM context of ~2.5 KB once used (10,000 of them:
    # +25 MB of the replay's peak at 1M events, where the cache is always full).
    keyring = Keyring(replace(settings, key_cache_size=min(settings.key_cache_size, _KEYS)))
    try:
        await keyring.start()
        # in the order it was written: the build records the version's history as it goes
        async for batch in _one_ahead(
            read_log(settings, settings.topic, start, stop, keyring=keyring, in_order=True)
        ):
            result = await runner.commit(batch, recompute=recompute)
            if result.gaps:  # cannot happen with a plain reader; never skip if it does
                raise RuntimeError(f"replay found a gap: {result.gaps}")
            read += len(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        await keyring.stop()
        await pool.close()
    return read


async def _positions(
    settings: Settings, schema: str, until: dict[int, int] | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """(checkpoints of `schema`, log end offsets) per partition; with `until`, the ends cut
    to it (a dry run builds as far as the live version stands, no further)."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    stop = await end_offsets(settings)
    if until is not None:
        stop = {p: min(end, until.get(p, 0)) for p, end in stop.items()}
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        _, start = await store.checkpoints(conn)
    return {p: start.get(p, 0) for p in stop}, stop


def _bulk_child(
    settings: Settings, schema: str, partitions: list[int], until: dict[int, int] | None
) -> None:
    """One replay job: the bulk pass over some partitions (in a child process)."""
    for module in settings.rule_plugins:
        importlib.import_module(module)

    async def run() -> None:
        start, stop = await _positions(settings, schema, until)
        mine = set(partitions)
        await _fold_range(
            settings,
            schema,
            {p: o for p, o in start.items() if p in mine},
            {p: o for p, o in stop.items() if p in mine},
            recompute=False,
        )

    asyncio.run(run())


async def _bulk(
    settings: Settings,
    schema: str,
    jobs: int,
    bar: tqdm[Any],
    until: dict[int, int] | None = None,
) -> bool:
    """The bulk pass: fold everything up to the current log end (in waves that record the
    version's history, `ProjectionStore`); with `jobs` > 1, in as many processes, each
    owning some partitions (they write disjoint rows: every object's events are in one
    partition), at a cost to the history: events of different jobs (a product, a customer's
    subscription to it) are then not folded in the order they were written.

    True when the whole log was folded by one job from offset 0 (not a resumed build): every
    customer was then recomputed as the live worker would have, at each of their events and
    each regroup, in the order the log was written, so nothing is left to recompute."""
    start, stop = await _positions(settings, schema, until)
    bar.total = sum(max(0, e - start.get(p, 0)) for p, e in stop.items())
    partitions = sorted(stop)
    if jobs <= 1 or len(partitions) < 2:
        await _fold_range(settings, schema, start, stop, recompute=False, bar=bar)
        return not any(start.values())
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_bulk_child, args=(settings, schema, partitions[j::jobs], until))
        for j in range(min(jobs, len(partitions)))
    ]
    for child in children:
        child.start()
    try:
        done = 0
        while any(c.is_alive() for c in children):
            await asyncio.sleep(0.5)
            now, _ = await _positions(settings, schema)
            progress = sum(now[p] - start.get(p, 0) for p in now)
            bar.update(progress - done)
            done = progress
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise RuntimeError(f"a replay job failed (exit codes {failed}); run replay again to resume")
    return False


async def build(
    settings: Settings,
    schema: str,
    *,
    progress: bool = True,
    catch_up_within: int = 100,
    jobs: int = 1,
    bulk: bool = True,
    until: dict[int, int] | None = None,
) -> None:
    """Fold the log into `schema`, resuming from its checkpoints, until it is within
    `catch_up_within` events of the live end; with `until`, exactly up to that position
    (offsets per partition, exclusive).

    The bulk pass (`bulk=True`) folds in waves that recompute entitlements event by event
    (the version's history, `ProjectionStore`); with parallel jobs, or when resumed, every
    customer is recomputed once more at its end. Later passes (catching up with what arrived
    meanwhile) recompute per batch, as the worker does.
    """
    bar = tqdm(desc="replay", unit="ev", disable=not progress, smoothing=0.1)
    try:
        if bulk:
            t0 = time.perf_counter()
            exact = await _bulk(settings, schema, jobs, bar, until)
            t1 = time.perf_counter()
            await _finish_bulk(settings, schema, recompute_all=not exact)
            log.info(
                "bulk pass %.1fs (%d jobs), indexes and entitlements %.1fs",
                t1 - t0,
                jobs,
                time.perf_counter() - t1,
            )
        while True:
            start, stop = await _positions(settings, schema, until)
            lag = sum(max(0, e - start.get(p, 0)) for p, e in stop.items())
            if lag <= (0 if until is not None else catch_up_within):
                break
            bar.total = (bar.total or 0) + lag
            await _fold_range(settings, schema, start, stop, recompute=True, bar=bar)
    finally:
        bar.close()


async def _finish_bulk(settings: Settings, schema: str, *, recompute_all: bool) -> None:
    """Build the secondary indexes, then (`recompute_all`: parallel jobs, or a resumed build)
    recompute every customer's entitlements once. One job from offset 0 needs no second
    pass: it cost ~7% of a replay and found nothing to change."""
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    async with await _connect(settings) as conn:
        await configure(conn)
        if not await versions.has_secondary_indexes(conn, schema):
            await db.create_secondary_indexes(conn, schema)
        if recompute_all:
            await store.recompute_all(conn, schema)


async def replay(
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: bool = True,
    jobs: int = 1,
    force: bool = False,
    each: Callable[[Difference], None] | None = None,
) -> ReplayReport:
    """Build a new version from the log (or continue an interrupted build), then swap to
    it, or, with `dry_run`, report how it differs from the live version.

    Raises `SwapRefused` when the swap gate refuses the build (unless `force`); the build
    then stays as a `ready` version. `each` is given every difference of a dry run, or of a
    refused swap, as they are read (the report keeps the first `_KEPT` and the count).
    """
    async with await _connect(settings) as conn:
        await db.migrate(conn)
        live = await db.active_schema(conn)
        resumed = await versions.resumable(conn)
        if resumed is not None:
            version, schema = resumed
            log.info("continuing the interrupted build of v%s", version)
        else:
            note = "dry run" if dry_run else "replay"
            version, schema = await versions.create(conn, note, carry_from=live)
    report = ReplayReport(version, schema)
    # A dry run builds only as far as the live version stands as it starts: built to the
    # log end while the live worker lagged, it held events live had not folded yet, and
    # reported those customers as differing (issue 24: the rolling upgrade's check).
    until = await _live_position(settings) if dry_run else None
    before, _ = await _positions(settings, schema)
    t0 = time.perf_counter()
    await build(settings, schema, progress=progress, jobs=jobs, until=until)
    report.seconds = time.perf_counter() - t0
    after, _ = await _positions(settings, schema)
    report.events = sum(after.values()) - sum(before.values())
    async with await _connect(settings) as conn:
        await versions.mark_ready(conn, version)
    if dry_run:
        await _judge_at_live(settings, report, each)
        return report
    await _swap_if_allowed(settings, report, force=force, each=each)
    return report


async def _live_position(settings: Settings) -> dict[int, int]:
    """Where the live version stands: its checkpoint per partition of the log."""
    async with await _connect(settings) as conn:
        return await _checkpoints(settings, conn, await db.active_schema(conn))


async def _judge_at_live(
    settings: Settings, report: ReplayReport, each: Callable[[Difference], None] | None
) -> None:
    """A dry run's verdict, at one log position as a swap's: caught up (unlocked, then
    under the active row's lock, so the live worker waits between two batches) to where
    the live version stands, then compared; nothing swapped. `report.behind` counts the
    log's events past that position (a lagging or stopped live worker)."""
    for _ in range(3):  # most of the way without the lock; what live folds meanwhile stays
        position = await _live_position(settings)
        start, stop = await _positions(settings, report.schema, position)
        if sum(max(0, e - start.get(p, 0)) for p, e in stop.items()) <= 100:
            break
        await _fold_range(settings, report.schema, start, stop, recompute=True)
    async with await _connect(settings) as conn, conn.transaction():
        await versions.lock_active(conn)
        await _judge(settings, conn, report, at_live=True, each=each)
        frozen = await _checkpoints(settings, conn, await db.active_schema(conn))
    ends = await end_offsets(settings)
    report.behind = sum(max(0, end - frozen.get(p, 0)) for p, end in ends.items())


async def _judge(
    settings: Settings,
    conn: psycopg.AsyncConnection[Any],
    report: ReplayReport,
    *,
    at_live: bool = False,
    each: Callable[[Difference], None] | None = None,
) -> None:
    """Catch the build up (one pass: under steady traffic a loop "until nothing is left"
    would chase the log for ever while the live worker waits on the lock; what arrives later
    the live worker folds into the new version after the swap), then fill in its
    differences from the live version and the swap gate's verdict.

    Up to the log end as of now, or (`at_live`, the active row locked: the live worker
    waits) up to where the live version stands, so that both are compared at one log
    position. Caught up to the log end while the live worker lagged, the build held the
    cancellations live had not folded yet: those customers "lost" entitlements, and the
    gate refused a sound build (the rolling upgrade's 1 of 41 customers, issue 24)."""
    start, stop = await _positions(settings, report.schema)
    live = await db.active_schema(conn)
    if at_live:
        frozen = await _checkpoints(settings, conn, live)
        stop = {p: max(start.get(p, 0), min(end, frozen.get(p, 0))) for p, end in stop.items()}
        ahead = sorted(p for p in stop if start.get(p, 0) > frozen.get(p, 0))
        if ahead:  # no live worker (or a stuck one): compared at different positions
            log.warning("the build is ahead of the live version on partitions %s", ahead)
    if any(end > start.get(p, 0) for p, end in stop.items()):
        await _fold_range(settings, report.schema, start, stop, recompute=True)
    lost = await _compare(conn, live, report, each)
    assert settings.kafka_bootstrap_servers
    ends = await end_offsets(settings)
    report.refusal = swap_gate.refusal_by_count(
        lost,
        entitled=await versions.entitled_customers(conn, live),
        log_events=sum(ends.values()),
        max_loss=settings.replay_max_loss,
        topic=settings.topic,
    )


async def _compare(
    conn: psycopg.AsyncConnection[Any],
    live: str,
    report: ReplayReport,
    each: Callable[[Difference], None] | None,
) -> int:
    """Fill in the report's differences from `live` (the first `_KEPT` and the count), give
    each to `each`, and count the customers who lose something: one slice of the comparison
    in memory at a time. In the caller's transaction."""
    report.differences, report.differing, lost = [], 0, 0
    async for part in versions.differences(conn, live, report.schema):
        report.differing += len(part)
        lost += len(swap_gate.losing(part))
        report.differences.extend(part[: max(0, _KEPT - len(report.differences))])
        if each is not None:
            for difference in part:
                each(difference)
    return lost


async def _swap_if_allowed(
    settings: Settings,
    report: ReplayReport,
    *,
    force: bool,
    cause: str = "replay",
    each: Callable[[Difference], None] | None = None,
) -> None:
    """Judge and swap in one transaction holding the active row: the live worker waits
    between two batches meanwhile, so both versions are compared at one log position (the
    live worker's, once it has caught up with the build: `_live_reaches`). A refused swap
    gives `each` its differences, compared again in the same transaction (the gate only
    counted them: a swap that goes through has nobody to show them to)."""
    await _live_reaches(settings, report.schema)
    async with await _connect(settings) as conn, conn.transaction():
        await versions.lock_active(conn)
        held = time.perf_counter()
        await _judge(settings, conn, report, at_live=True)
        if report.refusal is not None and not force:
            if each is not None:
                await _compare(conn, await db.active_schema(conn), report, each)
            raise SwapRefused(report)  # the transaction rolls back: nothing changes
        await versions.swap(conn, report.version, cause=cause)
        report.swapped = True
        log.info("swap gate and swap: the live worker waited %.2fs", time.perf_counter() - held)


async def _checkpoints(
    settings: Settings, conn: psycopg.AsyncConnection[Any], schema: str
) -> dict[int, int]:
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    _, checkpoints = await store.checkpoints(conn)
    return checkpoints


async def _live_reaches(
    settings: Settings, schema: str, *, idle_s: float = 1.0, patience_s: float = 30.0
) -> None:
    """Wait until the live version has folded at least as far as the build `schema` on
    every partition (the build may be ahead of a lagging worker, and cannot go back). Gives
    up when live stands still for `idle_s` (no live worker) or after `patience_s`: the
    comparison is then made at different positions (`_judge` says so)."""
    async with await _connect(settings) as conn:
        built = await _checkpoints(settings, conn, schema)
        t0 = moved = time.monotonic()
        last: dict[int, int] | None = None
        while True:
            live = await _checkpoints(settings, conn, await db.active_schema(conn))
            if all(live.get(p, 0) >= o for p, o in built.items()):
                return
            now = time.monotonic()
            if live != last:
                last, moved = live, now
            if now - moved > idle_s or now - t0 > patience_s:
                return
            await asyncio.sleep(0.1)


async def swap_ready(
    settings: Settings,
    version: int,
    *,
    force: bool = False,
    each: Callable[[Difference], None] | None = None,
) -> ReplayReport:
    """Swap in a `ready` version (a dry run, or a build the gate refused): catch it up with
    the log, then judge and swap as `replay` does (`each`: as `replay`'s)."""
    async with await _connect(settings) as conn:
        schema, state = await versions.state_of(conn, version)
    if state != "ready":
        raise ReplayError(f"v{version} is {state}: only a ready build can be swapped in")
    report = ReplayReport(version, schema)
    await build(settings, schema, progress=False, bulk=False)
    await _swap_if_allowed(settings, report, force=force, each=each)
    return report


async def list_versions(settings: Settings) -> list[versions.VersionInfo]:
    async with await _connect(settings) as conn:
        return await versions.list_versions(conn)


async def roll_back(
    settings: Settings, *, force: bool = False, each: Callable[[Difference], None] | None = None
) -> int:
    """Make the newest retired version older than the active one active again: caught up
    with the log first, then judged by the same gate as a swap (issue 19, point 3). A retired
    version stopped folding at the swap; served as it was, everything bought since then
    disappeared from search, cancellations regained access, and the feed published both
    flips. Raises `SwapRefused` when the gate refuses (unless `force`): nothing changes."""
    async with await _connect(settings) as conn:
        listed = await versions.list_versions(conn)
        active = next((v.version for v in listed if v.state == "active"), None)
        previous = [
            v.version
            for v in listed
            if v.state == "retired" and (active is None or v.version < active)
        ]
        if not previous:
            raise ReplayError("no previous version to roll back to")
        version = previous[-1]
        schema, _state = await versions.state_of(conn, version)
    report = ReplayReport(version, schema)
    await build(settings, schema, progress=False, bulk=False)  # most of the way, unlocked
    await _swap_if_allowed(settings, report, force=force, cause="rollback", each=each)
    return version


async def drop_version(settings: Settings, version: int) -> None:
    async with await _connect(settings) as conn:
        await versions.drop(conn, version)
