"""`entitled hydrate`: complete the logged events that lack what the projection needs.

A consumer of the event topic in its own group (`<ENTITLED_CONSUMER_GROUP>.hydrate`). For
each event Stripe sent (source `webhook` or `reconcile`) that `ingest.completion.needed`
picks (thin notifications, checkout sessions without line items, invoices without
payments), it reads the object from the Stripe API and writes it into the same topic as a
snapshot event: source `hydrate`, id `evt_hydrate_<hash of source event id and object id>`,
`created` the time it was read, keyed like any event of the object's customer, with a
`hydrated-from` header naming the source event. The fold never calls Stripe; a replay reads
these snapshots from the log.

Idempotent: a batch's consumer offsets are committed only up to the first record whose
snapshot Kafka has not acknowledged (the whole batch but at a stop: see `_hydrate_all`). A
source event whose snapshot is in the log is never fetched again: on every partition
assignment the hydrator reads the `hydrated-from` headers of its
own records written since the oldest uncommitted source record of the assigned partitions
(minus a margin for clock skew), and it remembers what it wrote since. So a SIGKILL between
the ack and the commit, a redelivered webhook or a reset of the group's offsets does not put
a second, different snapshot of one source event into the log. Should two hydrators ever
race on one event (a zombie after a rebalance), both snapshots carry the same id and the
fold keeps the first.

Every read takes a slot of the rate limiter backfill uses (`ENTITLED_BACKFILL_RPS`); 429,
5xx and connection errors are retried honouring `Retry-After` (`ingest.stripe_api`), and
retried again after a pause when that gives up: nothing is skipped for a transient error.
A 404 (the object was deleted) and other 4xx answers are counted and the event is passed.

A customer forgotten (`entitled forget`) after a source event of theirs was opened gets no
snapshot: right before writing one (each attempt), the hydrator reads the keys topic to its
end as of then (one ListOffsets when it has not moved) and passes a source event whose data
key is gone as `forgotten`; Stripe still has the object, and a snapshot would put the
customer back into the log under a new key (docs/erasure.md).

Without `STRIPE_API_KEY` nothing is fetched: such events are counted as `unhydrated` and
the offsets of their partitions are not committed, so `entitled hydrate --pending` (or the
hydrator restarted with a key) completes them later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import stripe
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError

from entitled import bodies
from entitled.crypto import key_id_of
from entitled.kafka import client_options
from entitled.keyring import Opened
from entitled.settings import Settings
from ingest import summary
from ingest.completion import Fetch, needed
from ingest.errors import LogUnavailable
from ingest.features import mirror_features
from ingest.hydrate.metrics import HydratorMetrics
from ingest.keys import created_at, event_headers, routing_key
from ingest.log_scan import header_values, write_times
from ingest.producer import EventProducer
from ingest.snapshots import hydrate_id, read_event
from ingest.stripe_api import Retrieved, StripeApi

log = logging.getLogger(__name__)

HYDRATED_FROM = "hydrated-from"
SOURCES_TO_COMPLETE = (b"webhook", b"reconcile")  # what Stripe sent; our own reads are whole
CLOCK_MARGIN_S = 60.0  # producer clocks of two hydrator hosts may disagree this much
_REMEMBERED = 200_000  # source ids kept in memory; older redeliveries are rescanned/deduped
_PAUSE_S = 5.0  # between rounds of a read that keeps failing transiently


def group_of(settings: Settings) -> str:
    """The hydrator's consumer group, beside the workers' own."""
    return f"{settings.consumer_group}.hydrate"


@dataclass
class HydrateResult:
    """Events by outcome: hydrated, gone (404), failed (other 4xx), no_state (nothing to
    write, e.g. an open session), duplicate (already hydrated), unhydrated (no key)."""

    outcomes: dict[str, int] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass(frozen=True)
class _Job:
    source_id: str
    source_type: str  # without the `v1.` of a thin notification
    fetch: Fetch
    account: str | None
    key_id: str | None = None  # the data key the source event was sealed with
    created: float = 0.0  # the source event's `created`: a forget after it stops the write


class _Recent:
    """A bounded set of the source event ids hydrated lately."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, metrics: HydratorMetrics) -> None:
        self.changed = False
        self.metrics = metrics

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.metrics.partitions.set(0)  # every batch is committed before the next is fetched

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.changed = True
        self.metrics.partitions.set(len(assigned))


class GroupWatch(Protocol):
    """This copy's identity in the hydrators' group and its watch over the other copies, when
    the hydrator is given one (`launcher.hydrate`, with a `DATABASE_URL`: the worker's
    `processors.membership`): the hydrator joins as a static member and a survivor removes a
    dead copy from the group at once, instead of after the session timeout (issue 24)."""

    instance_id: str

    async def joined(self, member_id: str) -> None: ...

    async def watch(self) -> None: ...

    async def close(self) -> None: ...


class Hydrator:
    """The hydrator of one process; `api` None means no key: count, fetch nothing."""

    def __init__(
        self,
        settings: Settings,
        *,
        api: StripeApi | None,
        metrics: HydratorMetrics | None = None,
        concurrency: int = 16,
        membership: GroupWatch | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.membership = membership
        self.metrics = metrics or HydratorMetrics(api)
        self.group = group_of(settings)
        self._gate = asyncio.Semaphore(concurrency)
        self._done = _Recent(_REMEMBERED)
        self._producer = EventProducer(settings)
        self._listener = _Assignments(self.metrics)
        # partitions holding an event left unhydrated (no key): never committed past it
        self._blocked: set[TopicPartition] = set()
        self._last_read_ms = 0
        self.result = HydrateResult()

    async def run(self, *, pending_only: bool = False, stop: asyncio.Event | None = None) -> None:
        """Hydrate until `stop` is set, or (`pending_only`) until the log end of the start."""
        stop = stop or asyncio.Event()
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=self.group,
            client_id="entitled-hydrator",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            # Off the path of every event but a thin one's, which waits for Stripe anyway: a
            # fetch waits for 64 KB or 100 ms rather than returning with each new record, so
            # at 200 webhooks/s the hydrator fetches and commits ~10 times a second, not
            # once per record or two (~0.15 of a core of its own and the broker's, on the
            # cores the visible path shares: issue 21)
            fetch_min_bytes=64 * 1024,
            fetch_max_wait_ms=100,
            # a dead hydrator's partitions move as fast as a dead worker's (processors.app)
            session_timeout_ms=int(self.settings.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.kafka_heartbeat_s * 1000),
            # a static member: a survivor removes a dead copy at once (`GroupWatch`)
            group_instance_id=self.membership.instance_id if self.membership else None,
        )
        consumer.subscribe([self.settings.topic], listener=self._listener)
        await self._producer.start()
        await consumer.start()
        timer = watch = None
        if not pending_only and self.api is not None and self.settings.features_every_s > 0:
            timer = asyncio.create_task(self._features_timer(stop))
        if self.membership is not None:
            watch = asyncio.create_task(self.membership.watch())
        try:
            ends = await self._log_end(consumer) if pending_only else None
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                if self._listener.changed:
                    self._listener.changed = False
                    await self._joined(consumer)
                    await self._recall(consumer)
                await self._measure_lag(consumer, batch, in_flight=True)
                await self._handle(consumer, batch, stop)
                if stop.is_set():
                    return  # what the batch finished is committed; the next owner reads on
                await self._measure_lag(consumer, batch, in_flight=False)
                if ends is not None and await self._reached(consumer, ends):
                    return
        finally:
            for task in (timer, watch):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            # A static member's consumer sends no LeaveGroup when it stops: forgetting the
            # instance id just before makes it leave by member id (as the worker's transport
            # does), so a clean stop hands the partitions over at once.
            coordinator = getattr(consumer, "_coordinator", None)
            if self.membership is not None and coordinator is not None:
                coordinator._group_instance_id = None
            await consumer.stop()
            await self._producer.stop()
            if self.membership is not None:
                await self.membership.close()

    async def _joined(self, consumer: AIOKafkaConsumer) -> None:
        """Record the member id our consumer joined as beside our lock (`GroupWatch`)."""
        coordinator = getattr(consumer, "_coordinator", None)
        if self.membership is None or coordinator is None:
            return
        try:
            await self.membership.joined(str(coordinator.member_id))
        except Exception:  # the watch reconnects and records it again
            log.warning("could not record our member id", exc_info=True)

    async def _features_timer(self, stop: asyncio.Event) -> None:
        """Every `features_every_s`, re-list products' features and log those that changed
        (`ingest.features`): Stripe sends no webhook for them. A failed round is logged and
        tried again at the next tick."""
        assert self.api is not None
        while not stop.is_set():
            try:
                done = await mirror_features(
                    self.settings, self.api, self._producer, source="reconcile"
                )
                log.info("features: %d products, %d written", done.products, done.written)
            except (stripe.StripeError, LogUnavailable) as exc:
                log.warning("features: %s; again in %.0f s", exc, self.settings.features_every_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.features_every_s)

    async def _hydrate_all(self, jobs: Mapping[str, _Job], stop: asyncio.Event) -> set[str]:
        """Hydrate `jobs`; the source ids of those finished.

        At `stop` (SIGTERM, issue 24) the batch is not abandoned: no new read starts, the
        reads in flight (at most `concurrency`) get `drain_timeout_s` to finish and write
        their snapshots, and the caller commits each partition up to its first unfinished
        record. Not the whole batch: it holds up to `max_poll_records` rate-limited reads,
        retried for ever through a Stripe outage, which could hold up the stop for minutes.
        A read cut at the deadline loses nothing either: its record is not committed, and
        the next owner finds a snapshot already written by its `hydrated-from` header."""
        tasks = {
            source: asyncio.ensure_future(self._hydrate(job, stop)) for source, job in jobs.items()
        }
        if not tasks:
            return set()
        every = asyncio.gather(*tasks.values())
        stopping = asyncio.ensure_future(stop.wait())
        first: set[asyncio.Future[Any]] = {every, stopping}
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not every.done():  # stopping: the jobs not started give up at the gate
            log.info("hydrator stopping: finishing the reads in flight")
            _, late = await asyncio.wait(tasks.values(), timeout=self.settings.drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.wait(tasks.values())
            if late:
                log.warning(
                    "hydrator stopping: %d reads cut after %.0f s",
                    len(late),
                    self.settings.drain_timeout_s,
                )
        with contextlib.suppress(asyncio.CancelledError):
            await every  # raises what a job raised (a wrong key: stop loudly)
        return {source for source, task in tasks.items() if not task.cancelled() and task.result()}

    async def _measure_lag(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Any], *, in_flight: bool
    ) -> None:
        """Records not completed yet (unread, plus the batch while it is in flight) and the
        age of the oldest of them as far as it is known (the batch's, else the last read)."""
        waiting = sum(len(records) for records in batch.values()) if in_flight else 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                waiting += max(high - await consumer.position(tp), 0)
        self.metrics.lag_events.set(waiting)
        firsts = [records[0].timestamp for records in batch.values() if records]
        known = min(firsts) if in_flight and firsts else self._last_read_ms
        oldest_ms = known if waiting else 0
        if not in_flight and firsts:
            self._last_read_ms = max(records[-1].timestamp for records in batch.values() if records)
        self.metrics.lag_seconds.set(max(time.time() - oldest_ms / 1000, 0.0) if oldest_ms else 0.0)

    async def _log_end(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        parts = consumer.partitions_for_topic(self.settings.topic) or set()
        if not parts:
            await consumer.getmany(timeout_ms=0)  # fetch metadata
            parts = consumer.partitions_for_topic(self.settings.topic) or set()
        tps = [TopicPartition(self.settings.topic, p) for p in parts]
        return dict(await consumer.end_offsets(tps)) if tps else {}

    async def _reached(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        mine = consumer.assignment()
        if not mine:
            return False
        for tp in mine:
            if await consumer.position(tp) < ends.get(tp, 0):
                return False
        return True

    async def _recall(self, consumer: AIOKafkaConsumer) -> None:
        """Remember the source events already hydrated that the new assignment may meet."""
        since = await self._oldest_pending(consumer)
        if since is None:
            return
        found = await header_values(self.settings, since, HYDRATED_FROM, source="hydrate")
        for source_id in found:
            self._done.add(source_id)
        log.info("hydrator: %d source events already hydrated since %.0f", len(found), since)

    async def _oldest_pending(self, consumer: AIOKafkaConsumer) -> float | None:
        """Unix seconds to read our own records from: the write time of the oldest source
        record not yet committed (its snapshot, if any, was written after it), less a
        margin; None when nothing is pending."""
        mine = list(consumer.assignment())
        if not mine:
            return None
        ends = await consumer.end_offsets(mine)
        firsts: dict[TopicPartition, int] = {}
        for tp in mine:
            committed = await consumer.committed(tp)
            first = committed if committed is not None and committed >= 0 else 0
            if first < ends[tp]:
                firsts[tp] = first
        times = await write_times(self.settings, firsts)
        return max(min(times) - CLOCK_MARGIN_S, 0.0) if times else None

    async def _handle(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Any], stop: asyncio.Event
    ) -> None:
        jobs: dict[str, _Job] = {}
        needs: dict[TopicPartition, list[tuple[int, str]]] = {}  # (offset, source id) to hydrate
        blocked = self._blocked
        for tp, records in batch.items():
            for record in records:
                job = await self._job_of(record)
                if job is None:
                    continue
                if job.source_id in self._done:
                    self._outcome("duplicate")
                    continue
                needs.setdefault(tp, []).append((record.offset, job.source_id))
                if job.source_id in jobs:
                    self._outcome("duplicate")
                elif self.api is None:
                    self._outcome("unhydrated")
                    blocked.add(tp)
                else:
                    jobs[job.source_id] = job
        finished = await self._hydrate_all(jobs, stop)
        mine = consumer.assignment()
        offsets = {}
        for tp, records in batch.items():
            if records and tp not in blocked and tp in mine:
                # up to the first record not finished (all of them unless stopping)
                undone = [offset for offset, source in needs.get(tp, ()) if source not in finished]
                offsets[tp] = min(undone, default=records[-1].offset + 1)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            # A rebalance (a copy joined or left) moved the partitions during the batch: their
            # next owner reads them again from the last commit and finds this batch's
            # snapshots by `hydrated-from` (nothing doubled). Raising here ended the process.
            log.warning("hydrate: offsets not committed, the group rebalanced: %s", exc)

    async def _job_of(self, record: Any) -> _Job | None:
        headers = dict(record.headers)
        if headers.get("source") not in SOURCES_TO_COMPLETE:
            return None
        opened = await self._open(record)
        if opened.unread:
            # its customer was forgotten (or its key never came): nothing to complete
            self._outcome("orphan" if opened.orphan else "forgotten")
            return None
        value = opened.value
        try:
            event = bodies.loads(value)  # as tolerant as the fold
        except bodies.UnreadableBody:
            return None  # not ours to judge: the worker parks it
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            return None
        fetch = needed(event)
        if fetch is None:
            return None
        account = event.get("context") or event.get("account")
        return _Job(
            event["id"],
            str(event.get("type")).removeprefix("v1."),
            fetch,
            account if isinstance(account, str) else None,
            key_id_of(headers),
            created_at(event),
        )

    async def _open(self, record: Any) -> Opened:
        """The record opened (it may wait for a key written just after it: the scan of
        this partition waits with it, `Keyring.open`). A wrong master key raises: stop
        loudly."""
        keyring = self._producer.keyring
        if keyring is None:
            return Opened(record.value or b"", sealed=False)
        return await keyring.open_record(record)

    async def _still_wanted(self, job: _Job, subject: str) -> bool:
        """As of now (the keys topic read to its end: one ListOffsets, a few ms; the topic
        read only if it moved), the source event's data key is still there (its subject was
        not forgotten since the event was opened), and the snapshot's subject (the customer)
        was not forgotten after the source event came to be: a notification about an object
        that no row linked to the customer when they were forgotten (so its own key lives
        on) writes no snapshot of them either."""
        keyring = self._producer.keyring
        if keyring is None:
            return True
        await self._producer.catch_up()  # Kafka away: LogUnavailable, tried again
        if job.key_id is not None and not keyring.holds(job.key_id):
            return False
        return not self._producer.forgotten(subject, job.created)

    async def _hydrate(self, job: _Job, stop: asyncio.Event) -> bool:
        """Fetch and write one job; False when stopping kept it from starting."""
        async with self._gate:
            if stop.is_set():
                return False  # no new read once stopping: the next owner makes it
            outcome = await self._fetch_and_write(job)
        self._outcome(outcome)
        return True

    async def _fetch_and_write(self, job: _Job) -> str:
        got = await self._fetch(job)
        if isinstance(got, str):
            return got
        event_id = hydrate_id(job.source_id, job.fetch.object_id)
        event = read_event(
            got.obj,
            event_id=event_id,
            api_version=got.api_version,
            read_at=got.read_at,
            fallback_type=job.source_type,
        )
        if event is None:
            self._done.add(job.source_id)
            return "no_state"
        if job.account:
            event["account"] = job.account
        if not await self._publish(event, job):
            # forgotten while we read Stripe (or before this process read the tombstone):
            # a snapshot now would put the customer back into the log under a new key
            return "forgotten"
        self._done.add(job.source_id)
        self.result.written.append(event_id)
        return "hydrated"

    async def _fetch(self, job: _Job) -> Retrieved | str:
        """The object as Stripe has it now, or the outcome of a read that gave up."""
        assert self.api is not None
        params = dict(job.fetch.params)
        if job.account:
            params["stripe_account"] = job.account
        while True:
            try:
                if job.fetch.reason == summary.REASON:  # a list read to the end
                    return await summary.complete(self.api, job.fetch.object_id, params)
                return await self.api.retrieve(job.fetch.path, params)
            except (stripe.AuthenticationError, stripe.PermissionError):
                raise  # a wrong key fails every read: stop loudly, commit nothing
            except stripe.StripeError as exc:
                status = exc.http_status
                if status == 404:
                    log.info("hydrate %s: %s is gone (404)", job.source_id, job.fetch.path)
                    return "gone"
                if status is not None and 400 <= status < 500 and status != 429:
                    log.warning("hydrate %s: %s answered %d", job.source_id, job.fetch.path, status)
                    return "failed"
                log.warning("hydrate %s: %s, again in %.0f s", job.source_id, exc, _PAUSE_S)
                await asyncio.sleep(_PAUSE_S)

    async def _publish(self, event: dict[str, Any], job: _Job) -> bool:
        """Write the snapshot; False (nothing written) once its source event's key is gone,
        checked before every attempt."""
        headers = event_headers(event, source="hydrate", received_at=time.time())
        headers.append((HYDRATED_FROM, job.source_id.encode()))
        raw = orjson.dumps(event)
        subject = routing_key(event)
        while True:
            try:
                if not await self._still_wanted(job, subject):
                    return False
                await self._producer.publish(raw, key=subject, headers=headers, created=job.created)
                return True
            except LogUnavailable as exc:  # same id on every attempt: a duplicate is harmless
                log.warning("hydrate %s: %s, again in %.0f s", job.source_id, exc.message, _PAUSE_S)
                await asyncio.sleep(_PAUSE_S)

    def _outcome(self, outcome: str) -> None:
        self.result.count(outcome)
        self.metrics.events.labels(outcome).inc()
