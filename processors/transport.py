"""The worker's Kafka transport: Faust's aiokafka driver with a shorter fetch wait, whose
consumer leaves the group on a clean stop even as a static member, and hands the event
topic's records to the agent in bulk.

Fetch wait: Faust builds its consumer with `fetch_max_wait_ms=1500`, not a setting. A fetch
in flight holds back the next fetch to its broker, and the broker answers a fetch of
partitions with nothing new only after that wait: so after a seek (a failover's seek to the
Postgres checkpoints, a seek back over a gap) a quiet partition's first records waited up to
1.5 s (measured: "reading again after the seek: 5 in 1.51s" in
tests/processors/test_worker.py). A fetch of partitions with new records is answered at once
whatever the wait.

Bulk delivery (issue 21): Faust delivers each fetched record on its own: a task per record
(`wait_first(callback(message), ...)`), the conductor's lock, a decode into an event, the
channel's queue, the stream's drainer and one ack each; measured at ~25 % of the live
worker's main thread, more than the writer's own Python work on small batches. The fold
needs none of it: it takes batches, reads raw bytes, and its truth is the Postgres
checkpoint, not the acks. So the records of the topics registered in `Transport.bulk` go,
as fetched, into a `Feed` that the agent takes whole batches from (`Feed.take`), and are
acknowledged in bulk once the batch is handled (`Consumer.ack_records`), which keeps
Faust's offset commits (a hint for where a new owner starts reading) as they were.
Everything else about the consumer is Faust's: the group, assignments, rebalances, flow
control, seeks, commits, its read-offset filter; records of other topics take Faust's
per-message path.

Start-up: Faust starts its producer and its consumer with one bootstrap each and crashes
the worker when the broker does not answer at that moment (a worker started while Kafka
restarts, seen in the chaos test: "Unable to bootstrap", exit). Both wait for Kafka here,
as the worker's own start does (`processors.cli`), with the same patience.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import aiokafka
from aiokafka.errors import KafkaConnectionError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import ack_lock

__all__ = ["FETCH_MAX_WAIT_MS", "BulkConsumer", "Feed", "Transport"]

# An idle worker asks its broker this often per consumer; Kafka's own default is 500.
FETCH_MAX_WAIT_MS = 100
START_PATIENCE_S = 120.0  # as the worker's own start (`processors.cli`)

log = logging.getLogger(__name__)


async def _started(make: Callable[[], Any], what: str) -> Any:
    """`make()` a client and start it, again with backoff while Kafka does not answer
    its bootstrap (a failed client is stopped and a new one made); the error after
    `START_PATIENCE_S`."""
    delay, deadline = 0.2, time.monotonic() + START_PATIENCE_S
    while True:
        client = make()
        try:
            await cast(Awaitable[None], client.start())
            return client
        except KafkaConnectionError as exc:
            with contextlib.suppress(Exception):  # it never started: little to stop
                await client.stop()
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for Kafka (%s): %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class _Producer(driver.Producer):
    async def on_start(self) -> None:
        await super(driver.Producer, self).on_start()  # Faust's own, then ours below
        self._producer = await _started(self._new_producer, "producer")
        self.beacon.add(self._producer)


class Feed:
    """Fetched records of one topic, in fetch order, waiting for the agent.

    `put` takes what one fetch brought (the drain loop waits while more than `limit`
    records wait: back-pressure on the fetcher, as Faust's full channel queue was); `take`
    returns what is waiting now, up to `max_` records: a record that arrives while a batch
    is being written joins the next batch, so batches grow with the load, and only an idle
    worker lingers (`linger`) for company."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._records: deque[Any] = deque()
        self._ready = asyncio.Event()  # records wait
        self._room = asyncio.Event()  # fewer than `limit` wait
        self._room.set()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, records: Iterable[Any]) -> None:
        self._records.extend(records)
        if self._records:
            self._ready.set()
            if len(self._records) >= self.limit:
                self._room.clear()

    async def room(self) -> None:
        await self._room.wait()

    def clear(self) -> None:
        """Forget what waits (a rebalance: each partition is sought again after it)."""
        self._records.clear()
        self._ready.clear()
        self._room.set()

    async def take(self, max_: int, linger: float = 0.0) -> list[Any]:
        """The records waiting now, up to `max_`. With none waiting, waits for the first,
        then `linger` seconds more for others to join it (an idle worker's batch)."""
        if not self._records:
            while not self._records:
                self._ready.clear()
                await self._ready.wait()
            if linger > 0:
                await asyncio.sleep(linger)
        records = self._records
        n = min(max_, len(records))
        batch = [records.popleft() for _ in range(n)]
        if not records:
            self._ready.clear()
        if len(records) < self.limit:
            self._room.set()
        return batch


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        self.time_started = time.monotonic()
        self._consumer = await _started(
            lambda: self._create_consumer(loop=self.thread_loop), "consumer"
        )

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # handed to its fetcher at start
        return consumer

    async def on_thread_stop(self) -> None:
        # A static member (`processors.membership`) sends no LeaveGroup when its consumer
        # stops: aiokafka skips it when the consumer has a group instance id, so a deploy
        # would leave its partitions unread for the whole session timeout. Forgetting the
        # id just before the stop makes the coordinator leave by member id, as a dynamic
        # member does (the broker removes the static member with it).
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            coordinator._group_instance_id = None
        await super().on_thread_stop()


class BulkConsumer(driver.Consumer):
    """Faust's aiokafka consumer that hands the records of `Transport.bulk` topics to their
    `Feed` (see the module's doc)."""

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack_records(self, records: Sequence[Any]) -> None:
        """Acknowledge `records` (taken from a `Feed`) at once, as Faust's `ack` does one by
        one: their offsets become committable to Kafka."""
        by_tp: dict[TP, list[int]] = {}
        for r in records:
            by_tp.setdefault(TP(r.topic, r.partition), []).append(r.offset)
        with ack_lock:
            for tp, offsets in by_tp.items():
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                new = [
                    o for o in offsets if (committed is None or o >= committed) and o not in index
                ]
                if new:
                    index.update(new)
                    self._acked[tp].extend(new)
                    self._n_acked += len(new)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        feeds = cast(Transport, self.transport).bulk
        if not feeds:
            await super()._drain_messages(fetcher)
            return
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        read_offset = self._read_offset
        commit_every = self._commit_every
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                generation = self.app.consumer_generation_id
                await self.sleep(0)  # as Faust: a loop of empty fetches yields to the others
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # a rebalance began: as Faust's getmany
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # a partition revoked meanwhile (as Faust's
                        # getmany: raised, it crashed the fetcher and stopped the worker)
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                for tp, batch in records.items():
                    if self.app.consumer_generation_id != generation:
                        break  # a rebalance: Faust drops the rest of the fetch too
                    if active is not None and tp not in active:
                        continue
                    # Faust's read-offset filter: records from before a seek are dropped
                    r_offset = read_offset.get(tp)
                    if r_offset is not None:
                        batch = [r for r in batch if r.offset >= r_offset]
                    if not batch:
                        continue
                    prev = r_offset
                    for r in batch:  # as Faust: offsets with no record are acked as a gap
                        if prev and r.offset - prev > 1:
                            await self._add_gap(tp, prev + 1, r.offset)
                        prev = r.offset
                    feed = feeds.get(tp.topic)
                    if feed is None:  # not ours: Faust's per-message delivery
                        for r in batch:
                            await self.wait_first(
                                self.callback(self._to_message(tp, r)), self.suspend_flow.wait()
                            )
                    else:
                        feed.put(batch)
                    read_offset[tp] = batch[-1].offset
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                for feed in feeds.values():  # back-pressure: wait while the agent is behind
                    await self.wait_first(feed.room(), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    """Faust's aiokafka transport whose worker consumer fetches with a short wait and hands
    the records of the topics in `bulk` to their `Feed`."""

    Consumer = BulkConsumer
    Producer = _Producer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bulk: dict[str, Feed] = {}
