"""The one Kafka producer of an ingest process: idempotent, acks=all, bounded waits.

`publish` returns only once the broker acknowledged the write, or raises `LogUnavailable`
after `settings.produce_timeout_s`. Events go out in one record batch per partition per
round trip (`ingest.batches`). A send we gave up on may still sit in its batch and be
delivered later (giving up does not withdraw the record). That is harmless, since Stripe
retries after our 503 and the fold deduplicates by event id, but it must not go unnoticed:
each such late outcome is logged and counted in `late_acks` / `late_failures` (exported by
`ingest.metrics`).

A failed write can leave aiokafka's idempotent producer with sequence numbers the broker no
longer accepts (after a broker restart under load every later write to those partitions
fails with OutOfOrderSequenceNumber). So after any write that Kafka refused or that failed
late, the producer is replaced by a fresh one (a new producer id starts its sequences anew)
before the next write (once: the failures of writes still in flight on a producer already
replaced do not replace its successor); until that succeeds `ready()` is false. Duplicates
this may cause are removed by the fold, which deduplicates by event id.

Every value is sealed with a data key of its subject (the message key) before it is sent
(`entitled.keyring`, DESIGN.md "Forgetting a customer"): every writer of the log (webhooks,
backfill, reconcile, hydrate, refresh, the features mirror) writes through here. A subject's
first event writes its key through this producer too, at the same time as the event: both
leave in the same produce cycle, and `publish` returns only once both are acknowledged
(acks=all), so an event acknowledged to its sender always has its key in the keys topic.
Writing the key first cost a new subject a second round trip (and a second suspension of
the request): +46 % for a new subject's webhook. Readers wait for a key written after its
event (`Keyring.open`, docs/erasure.md "Key order"). If the key's write fails, `publish`
fails (Stripe retries) and the keyring drops that key. One producer for keys and events:
one sender loop, and under load the keys of some requests ride in one produce request with
the events of others (a second producer cost a request cycle of its own per key batch).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from entitled.crypto import CryptoError
from entitled.kafka import client_options
from entitled.keyring import Keyring, Record, write_records
from entitled.settings import Settings
from ingest.batches import EventBatches
from ingest.errors import ConfigurationError, LogUnavailable

log = logging.getLogger(__name__)

# Room for key and headers on top of the largest body we accept.
_RECORD_OVERHEAD = 64 * 1024
# Many small events per request: the 16 KiB default holds ~5 webhooks and stalls senders;
# below the broker's default message.max.bytes (1 MiB).
_BATCH_BYTES = 512 * 1024


class EventProducer:
    """Writes raw events to `settings.topic`; one instance per process."""

    def __init__(
        self, settings: Settings, *, keyring: Keyring | None = None, seal: bool = True
    ) -> None:
        """`seal=False` writes values as they are (benchmarks compare the cost of sealing)."""
        if not settings.kafka_bootstrap_servers:
            raise ConfigurationError("kafka_bootstrap_servers is not set")
        try:
            self.keyring = (keyring or Keyring(settings)) if seal else None
        except CryptoError as exc:
            raise ConfigurationError(str(exc)) from exc
        self._own_keyring = keyring is None
        self.settings = settings
        self.topic = settings.topic
        self.timeout_s = settings.produce_timeout_s
        self.late_acks = 0
        self.late_failures = 0
        self._producer: AIOKafkaProducer | None = None
        self._batches: EventBatches | None = None  # the event batches of `_producer`
        self._needs_reset = False
        self._reset_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect to the cluster, fetch metadata for the topic, and read the keyring (a
        wrong master key stops the start: `WrongMasterKey`)."""
        self._use(await self._new_producer())
        if self.keyring is None:
            return
        self.keyring.write_through(self._write_keys)
        if self._own_keyring:
            try:
                await self.keyring.start(follow=True)
            except BaseException as exc:
                await self.stop()
                if isinstance(exc, KafkaError):
                    raise LogUnavailable(f"cannot read the keys: {type(exc).__name__}") from exc
                raise
            self.keyring.directory.index_newest()  # it seals: not at the first event

    async def _new_producer(self) -> AIOKafkaProducer:
        # Built here, not in __init__: aiokafka binds to the running loop, and the app (with
        # its producer) is usually created before uvicorn starts the loop.
        producer = AIOKafkaProducer(
            **client_options(self.settings),
            client_id="entitled-ingest",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # measured: lingering only adds latency here, no CPU saved
            max_batch_size=_BATCH_BYTES,
            max_request_size=self.settings.max_body_bytes + _RECORD_OVERHEAD,
            # The accumulator drops a batch whose partition has no leader after this long.
            request_timeout_ms=max(int(self.timeout_s * 1000), 1000),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise LogUnavailable(f"cannot connect to Kafka: {type(exc).__name__}") from exc
        return producer

    def _use(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._batches = EventBatches(
            producer,
            self.topic,
            # an estimate's slack below the builder's size: a batch fits one builder
            batch_bytes=_BATCH_BYTES * 3 // 4,
            max_record=self.settings.max_body_bytes + _RECORD_OVERHEAD,
        )

    async def _reset_if_needed(self) -> None:
        if not self._needs_reset:
            return
        async with self._reset_lock:
            if not self._needs_reset:
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    fresh = await self._new_producer()
            except TimeoutError as exc:
                raise LogUnavailable("Kafka did not answer in time") from exc
            old, batches = self._producer, self._batches
            self._use(fresh)
            self._needs_reset = False
            log.warning("replaced the Kafka producer after a failed write")
            if old is not None and batches is not None:
                # Its pending sends fail or land (and are counted) in the background.
                task = asyncio.create_task(_retire(old, batches))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)

    async def stop(self) -> None:
        """Flush what is pending (bounded by the producer's own timeouts) and disconnect."""
        producer, self._producer = self._producer, None
        batches, self._batches = self._batches, None
        if producer is not None and batches is not None:
            await _retire(producer, batches)
        await asyncio.gather(*self._retired, return_exceptions=True)
        if self.keyring is not None:
            self.keyring.write_through(None)
            if self._own_keyring:
                await self.keyring.stop()

    def _running(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise LogUnavailable("the Kafka producer is not started")
        return self._producer

    def forgotten(self, key: str, created: float) -> bool:
        """`key` was forgotten after `created`, as far as the keyring has read
        (`catch_up` first for "now"): `publish` would seal that event with no key."""
        return self.keyring is not None and self.keyring.forgotten_since(key, created)

    async def catch_up(self) -> None:
        """Read the keys topic to its end as of now, so that every forget made before this
        call counts for the writes after it (`publish(created=...)`): one ListOffsets, the
        topic read only if it moved. Writers that read Stripe call it before each batch of
        writes; ingest relies on the keyring's follower (every `keys_follow_s`) and on the
        fold's own check for the moment between."""
        if self.keyring is None:
            return
        try:
            await self.keyring.refresh()
        except KafkaError as exc:
            raise LogUnavailable(f"cannot read the keys: {type(exc).__name__}") from exc

    async def _write_keys(self, topic: str, records: Sequence[Record]) -> None:
        """The keyring's writer (`Keyring.write_through`): key records through this producer,
        replaced after a failure like any write."""
        await self._reset_if_needed()
        producer = self._running()
        try:
            await write_records(producer, topic, records)
        except KafkaError:
            self._failed(producer)
            raise

    async def publish(
        self,
        raw: bytes,
        *,
        key: str,
        headers: list[tuple[str, bytes]],
        created: float | None = None,
    ) -> tuple[int, int]:
        """Write `raw` (sealed with a data key of `key`: byte for byte once opened) and wait
        for the ack; return (partition, offset).

        `created`: when the event came to be (Stripe's `created`; a snapshot's object or
        source event). When `key` was forgotten after that, the event is written sealed with
        a key that exists nowhere: in the log (Stripe gets its 200, reconcile finds the id)
        but unreadable from the start (`Keyring.seal`). None: not checked.

        Raises `LogUnavailable` when Kafka did not acknowledge within the timeout.
        """
        outcome: asyncio.Future[None] | None = None
        await self._reset_if_needed()
        producer = self._running()
        batches = self._batches
        assert batches is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                value, key_written = raw, None
                if self.keyring is not None:
                    # a new key's write is queued here and leaves with the event (module doc)
                    sealed = self.keyring.seal_now(key, raw, created=created)
                    value, key_written = sealed.value, sealed.written
                    headers = [*headers, sealed.header]
                # Cancelled before it is queued (metadata wait), the record is not sent; after,
                # it is (`outcome` tells its fate).
                written, outcome = await batches.add(key.encode(), value, headers)
                where = await written
                if key_written is not None:  # its key is in the topic before we say it is
                    await asyncio.shield(key_written)
                return where
        except TimeoutError as exc:
            if outcome is not None:
                outcome.add_done_callback(functools.partial(self._late_outcome, producer))
            raise LogUnavailable(_reason(exc)) from exc
        except KafkaError as exc:
            self._failed(producer)
            raise LogUnavailable(_reason(exc)) from exc

    async def ready(self) -> bool:
        """True when a broker answered a metadata request and knows the topic."""
        if self._producer is None:
            return False
        if self._needs_reset:
            try:
                await self._reset_if_needed()
            except LogUnavailable:
                return False
        client = self._producer.client
        # Tracked, so the update asks for it: once the producer has written a key, the keys
        # topic is tracked, and an update then asks for the tracked topics only.
        client.add_topic(self.topic)
        try:
            async with asyncio.timeout(min(self.timeout_s, 2.0)):
                updated = await client.force_metadata_update()
        except (TimeoutError, KafkaError):
            return False
        return bool(updated) and bool(client.cluster.partitions_for_topic(self.topic))

    def _failed(self, producer: AIOKafkaProducer) -> None:
        """A write through `producer` failed: replace it before the next write, unless it
        was replaced already. Under load many writes are in flight when a broker restarts;
        were each failure of a retired producer to replace the current one, every
        replacement would retire a producer with writes in flight, whose failures would
        replace the next, and ingest would answer 503 for as long as the load lasted."""
        if producer is self._producer:
            self._needs_reset = True

    def _late_outcome(self, producer: AIOKafkaProducer, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled():
            return
        exc = delivery.exception()
        if exc is None:
            self.late_acks += 1
            log.warning("a write answered 503 was acknowledged later")
        else:
            self.late_failures += 1
            self._failed(producer)
            log.warning("a write answered 503 finally failed: %s", _reason(exc))


async def _retire(producer: AIOKafkaProducer, batches: EventBatches) -> None:
    """Write what is queued (bounded by the producer's own timeouts), then disconnect."""
    await batches.drain()
    await producer.stop()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "Kafka did not acknowledge the write in time"
    return f"Kafka refused the write: {type(exc).__name__}"
