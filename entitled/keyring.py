"""The keyring: the data keys of the log's subjects, kept in a compacted Kafka topic.

Record key = `<subject>/<key id>`, value = the data key wrapped by the master key
(`entitled.crypto`); a tombstone (null value) forgets that key. Kafka, not Postgres: ingest
depends on Kafka alone, and compaction removes a tombstoned key from the disks within a
bounded time (`keys_topic_configs`, docs/erasure.md). Two writers may make two keys for one
subject (distinct record keys, both kept); forgetting tombstones every one.

Every process reads the whole topic at start (`start`) and follows it (`follow`): the
directory of wrapped keys (key id -> subject, wrapped key) is complete in memory, the
unwrapped keys only for the `key_cache_size` used most lately.

Key order (docs/erasure.md): a subject's new key and the first event sealed with it are
written at once, in one produce round trip (`seal_now`: the key's write is queued, the
caller sends the event and acknowledges it only once both are acked). A waiting for the
key first cost a new subject's webhook a second round trip. So a reader may meet an event
before its key: `open` (given the record's subject and Kafka timestamp) waits for a key it
does not know, reading the topic again with backoff, until the record is `key_wait_s` old;
never calls it forgotten before. A key that never came by then is an orphan of a failed key
write (that event's writer was refused: Stripe, or the writer, sent it again under another
key): skipped and counted as such. A key the reader saw tombstoned, a subject forgotten
after the record was written, a value sealed with a key never meant to be written
(`SHREDDED`): forgotten at once, as before. A key whose write failed is dropped: the writer
never seals with it again (a new event makes a new key).

A record `entitled.key-check`, wrapped like a data key, proves the master key at start: a
master key that does not open it (or, on an older topic, the first data key) stops the
process (`WrongMasterKey`) instead of silently reading every event as forgotten.

A record `entitled.forgotten/<subject>` (value: the time T of the forget, Unix seconds; no
personal data beyond the id, which the erasure record holds too) says that the subject was
forgotten at T. It is never tombstoned (compaction keeps the latest per subject), so it
outlives the tombstones: every writer seals an event about that subject created before T
with a key that is never written (`seal(created=...)`: the event is in the log, unreadable
from the start), however late the event reaches it, while an event created after T starts
a new key. The fold's own check is in Postgres (`projections.erasure.screen`).

A record `entitled.erased` (no personal data: the time of the latest forget) says that keys
were forgotten from this topic. Compaction keeps it (the latest record of its key) after it
has removed every forgotten key and its tombstone, so a topic left with no data key at all
still tells "everyone was forgotten" (their events read as forgotten) from "a wrong keys
topic" (an error: never read a whole log as forgotten by mistake).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from entitled.crypto import (
    KEY_HEADER,
    CryptoError,
    KeyCache,
    MasterKeys,
    key_id_of,
    new_data_key,
    new_key_material,
    open_value,
    parse_master_keys,
    seal_value,
)
from entitled.kafka import client_options
from entitled.keydirectory import KeyDirectory
from entitled.settings import Settings
from entitled.topics import TopicError, ensure_topic

__all__ = [
    "CHECK_KEY",
    "ERASED_KEY",
    "FORGOTTEN_PREFIX",
    "SHREDDED",
    "KeyWriter",
    "Keyring",
    "Opened",
    "Sealed",
    "key_records",
    "keys_topic_configs",
    "record_time",
    "write_records",
]

log = logging.getLogger(__name__)

CHECK_KEY = b"entitled.key-check"
_CHECK_PLAIN = b"entitled: this master key wraps the data keys"
ERASED_KEY = b"entitled.erased"
FORGOTTEN_PREFIX = b"entitled.forgotten/"  # + subject: forgotten at the time in the value
# The key id of a value sealed with a key that is never written (`seal(created=...)` of an
# event about a subject forgotten after it): readers know it forgotten without waiting for
# the key (it names no key, only that the writer shredded it).
SHREDDED = "shredded-"
_FIRST_WAIT_S = 0.005  # the first pause of a reader waiting for a key (then doubled)
_MAX_WAIT_S = 1.0
_MARKERS = (CHECK_KEY, ERASED_KEY)

Record = tuple[bytes, bytes | None]  # record key, value (None: a tombstone)
# Writes records to partition 0 of a topic, in order, and returns once all are acknowledged
# (acks=all): `write_records` through some producer.
KeyWriter = Callable[[str, Sequence[Record]], Awaitable[None]]


class LogRecord(Protocol):
    """A record of the event topic as aiokafka returns it (`ConsumerRecord`)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def timestamp(self) -> int: ...


def record_time(timestamp_ms: int | None) -> float:
    """A Kafka timestamp in Unix seconds; 0 (long ago: no key is waited for) when the
    record has none (-1)."""
    return timestamp_ms / 1000 if timestamp_ms is not None and timestamp_ms >= 0 else 0.0


def keys_topic_configs(settings: Settings) -> dict[str, str]:
    """Compacted, never deleted by age; dirty segments compacted soon. A tombstoned key is
    gone from the disks once the segment holding its tombstone has rolled (`segment.ms`, at
    the next write after that) and the cleaner has compacted it (within
    `max.compaction.lag.ms`, whatever the dirty ratio). The tombstone itself stays
    `delete.retention.ms`, long enough for every follower to see it."""
    return {
        "cleanup.policy": "compact",
        "retention.ms": "-1",
        "segment.ms": str(int(settings.keys_segment_s * 1000)),
        "max.compaction.lag.ms": str(int(settings.keys_segment_s * 1000)),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(24 * 3600 * 1000),
    }


@dataclass(frozen=True, slots=True)
class Opened:
    """A record's value as the log's readers want it: the raw bytes, or `forgotten` (its
    data key was deleted: skip it, count it, never dead-letter it)."""

    value: bytes
    forgotten: bool = False
    sealed: bool = True  # False: a record written without encryption, read as it is
    key_id: str | None = None  # the `entitled-key` header (None: not sealed)
    # Its key never reached the keys topic (its write failed; the writer was refused, the
    # event was sent again under another key): skip it, count it, never dead-letter it.
    orphan: bool = False

    @property
    def unread(self) -> bool:
        """Passed unread: forgotten or an orphan."""
        return self.forgotten or self.orphan


class Sealed(NamedTuple):
    """A value sealed by `Keyring.seal_now`, the header naming its key, and the write of
    that key when it is new and not acknowledged yet: the event may be acknowledged only
    once that is done too (it raises what the write raised). A tuple: made per event."""

    value: bytes
    header: tuple[str, bytes]
    written: asyncio.Future[None] | None = None


class Keyring:
    """One per process. `start()` before use; `stop()` at the end."""

    def __init__(self, settings: Settings) -> None:
        if not settings.kafka_bootstrap_servers:
            raise TopicError("no Kafka: set KAFKA_BOOTSTRAP_SERVERS (or run through `entitled`)")
        self.settings = settings
        self.topic = settings.data_keys_topic
        self.master = MasterKeys(parse_master_keys(settings.master_key))
        self.cache = KeyCache(settings.key_cache_size)
        # key id -> (subject, wrapped key): every live key of the topic, and each subject's
        # newest (the key its writer seals with)
        self.directory = KeyDirectory(self.master.prefix)
        self._forgotten: dict[str, float] = {}  # subject -> when it was last forgotten
        self.shredded = 0  # events sealed with a key never written (`seal`)
        # key ids known to be gone (bounded): tombstoned (False) or orphans (True)
        self._gone_ids: dict[str, bool] = {}
        self._check: bytes | None = None
        # No data key, tombstone nor erasure mark in the topic at all: a sealed record whose
        # key is missing then means a wrong ENTITLED_KEYS_TOPIC, not erasure.
        self._any_key = False
        self._consumer: AIOKafkaConsumer | None = None
        self._probe: AIOKafkaConsumer | None = None  # asks for the topic's end (`refresh`)
        self._producer: AIOKafkaProducer | None = None
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._unwritten: dict[str, asyncio.Future[None]] = {}  # key id -> its write, queued
        self._follower: asyncio.Task[None] | None = None
        self._writer: KeyWriter = self._write_own
        self._pending: _Pending | None = None  # records to write in the next batch
        self._flushing: asyncio.Task[None] | None = None  # writing batches (`_flush`)

    def write_through(self, writer: KeyWriter | None) -> None:
        """Write the key records through `writer` (the event producer's: see `_send`), or
        through a producer of the keyring's own (None)."""
        self._writer = writer or self._write_own

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, *, follow: bool = False) -> None:
        """Create the topic, read it to its end, prove the master key; with `follow`, keep
        reading it (tombstones and other writers' keys) every `keys_follow_s`."""
        await ensure_topic(self.settings, self.topic, 1, configs=keys_topic_configs(self.settings))
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            enable_auto_commit=False,
            group_id=None,
            client_id="entitled-keyring",
            # `assign` starts a reset of its own with this strategy; with "latest" it could
            # land after `seek_to_beginning` and put the reader at the end (seen: a keyring
            # that read no key of a topic holding 300)
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        try:
            probe = AIOKafkaConsumer(
                **client_options(self.settings),
                enable_auto_commit=False,
                group_id=None,
                client_id="entitled-keyring-probe",
            )
            await probe.start()
            self._probe = probe
            await consumer.seek_to_beginning(tp)
            await self.refresh()
            await self._prove_master()
        except BaseException:
            await self.stop()
            raise
        if follow:
            self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        consumer, self._consumer = self._consumer, None
        probe, self._probe = self._probe, None
        if self._flushing is not None:  # what was asked for before the stop goes out
            await asyncio.gather(self._flushing, return_exceptions=True)
        producer, self._producer = self._producer, None
        if consumer is not None:
            await consumer.stop()
        if probe is not None:
            await probe.stop()
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Keyring:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keys_follow_s)
            try:
                await self.refresh()
            except Exception:  # Kafka away for a moment: the next tick reads on
                log.warning("could not follow the keys topic", exc_info=True)

    async def _prove_master(self) -> None:
        if self._check is not None:
            self.master.unwrap(self._check, CHECK_KEY)  # raises WrongMasterKey
            return
        for key_id, subject, wrapped in self.directory.items():
            self.master.unwrap(wrapped, _record_key(subject, key_id))  # an older topic
            break
        await self._send(CHECK_KEY, self.master.wrap(_CHECK_PLAIN, CHECK_KEY))
        self._check = b"written"  # proven by writing it

    # -- reading the topic --------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the topic up to its end as of now.

        The end is asked through a client of its own (`_probe`), not the reading consumer:
        that one always has a fetch in flight, which the broker holds up to
        `fetch_max_wait_ms` (500 ms) while nothing is new, and a broker answers the requests
        of one connection in order, so asking there waited for that fetch (measured: ~500 ms
        a refresh on an idle topic; ~3 ms through the probe). Only when the end moved does
        the reader read, and then the fetch in flight returns as soon as there is data."""
        consumer, probe = self._consumer, self._probe
        if consumer is None or probe is None:
            raise CryptoError("the keyring is not started")
        tp = TopicPartition(self.topic, 0)
        end = (await probe.end_offsets([tp]))[tp]
        async with self._read_lock:
            while await consumer.position(tp) < end:
                await self._take(consumer, tp, timeout_ms=1000)

    async def _drain(self) -> None:
        """Apply what the reading consumer has fetched already, asking the broker nothing.

        Its fetch task keeps a fetch in flight, which the broker answers as soon as a record
        lands: a key written with its event (one produce request) is usually in this
        consumer's buffer by the time a reader meets the event, so a reader looking for it
        does not pay `refresh`'s round trip for the topic's end (issue 21: ~5 ms a batch of
        new subjects at p50, ~30 at p99, on every webhook -> visible path)."""
        consumer = self._consumer
        if consumer is None:
            raise CryptoError("the keyring is not started")
        async with self._read_lock:
            await self._take(consumer, TopicPartition(self.topic, 0), timeout_ms=0)

    async def _take(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, *, timeout_ms: int
    ) -> None:
        """Apply the records the reading consumer returns within `timeout_ms` (0: those it
        holds already). Under `_read_lock`."""
        batch = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=10_000)
        for record in batch.get(tp, ()):
            self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if key == CHECK_KEY:
            self._check = value
            return
        if key == ERASED_KEY:  # keys were forgotten here: a missing key is a forgotten one
            self._any_key = True
            return
        if key.startswith(FORGOTTEN_PREFIX):
            self._any_key = True
            subject = key[len(FORGOTTEN_PREFIX) :].decode("utf-8", "replace")
            try:
                self._forgotten[subject] = float(value or b"")
            except ValueError:
                log.warning("ignored a forget mark that holds no time: %r", key)
            return
        subject, _, key_id = key.decode("utf-8", "replace").rpartition("/")
        self._any_key = True
        if value is None:
            self._forget_locally(key_id)
            return
        self.directory.put(key_id, subject, value)
        self._gone_ids.pop(key_id, None)

    def _forget_locally(self, key_id: str) -> None:
        self.directory.pop(key_id)  # its subject's next event starts a new key
        self.cache.drop(key_id)
        self._remember_gone(key_id)

    def _remember_gone(self, key_id: str, *, orphan: bool = False) -> None:
        self._gone_ids[key_id] = orphan
        if len(self._gone_ids) > self.settings.key_cache_size:
            self._gone_ids.pop(next(iter(self._gone_ids)))

    def _aead(self, key_id: str) -> AESGCM | None:
        aead = self.cache.get(key_id)
        if aead is not None:
            return aead
        found = self.directory.sealed(key_id)
        if found is None:
            return None
        wrapped, record_key = found
        return self.cache.put(key_id, self.master.unwrap(wrapped, record_key))

    async def open(
        self,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes],
        *,
        subject: str | None = None,
        timestamp: float | None = None,
    ) -> Opened:
        """A record's value opened: the raw bytes, forgotten when its key is gone, an orphan
        when its key never came.

        `subject` (the record's message key) and `timestamp` (its Kafka timestamp, Unix
        seconds): every reader of the log passes them; a key this keyring does not know is
        then waited for while it may still be on its way (see the module doc). Without them,
        one read of the topic decides (a key still absent is forgotten): only for records
        whose keys were written before them.

        Raises `WrongMasterKey` (a key that does not unwrap) and Kafka errors: never a reason
        to skip an event."""
        key_id = key_id_of(headers)
        raw = value or b""
        if key_id is None:
            return Opened(raw, sealed=False)
        aead = self._aead(key_id)
        if aead is None:
            gone = self._gone_ids.get(key_id)
            if gone is None and not key_id.startswith(SHREDDED):
                if subject is None or timestamp is None:
                    subject = None  # the old rule: forgotten, never an orphan
                    await self.refresh()
                    aead = self._aead(key_id)
                else:
                    aead = await self._arriving(key_id, subject, timestamp)
                if aead is None:
                    gone = self._decide(key_id, subject)
            if aead is None:
                return Opened(b"", forgotten=not gone, orphan=bool(gone), key_id=key_id)
        try:
            return Opened(open_value(aead, raw), key_id=key_id)
        except CryptoError:  # damaged on the way: the fold dead-letters it as unreadable
            return Opened(raw, key_id=key_id)

    async def open_record(self, record: LogRecord) -> Opened:
        """`open` for a record of the event topic: its message key is its subject, its
        Kafka timestamp when it was written."""
        key = record.key
        return await self.open(
            record.value,
            record.headers,
            subject=key.decode("utf-8", "replace") if key is not None else "",
            timestamp=record_time(record.timestamp),
        )

    async def _arriving(self, key_id: str, subject: str, timestamp: float) -> AESGCM | None:
        """The key `key_id` of a record of `subject` written at `timestamp`, once it is in
        the topic; None when it cannot be on its way any more: tombstoned, its subject
        forgotten after the record, or a read of the topic begun once the record was
        `key_wait_s` old found nothing (its writer had given up on it by then). Waits at
        most `key_wait_s` from now, whatever the record's clock said."""
        bound = self.settings.key_wait_s
        deadline = min(timestamp + bound, time.time() + bound)
        delay = _FIRST_WAIT_S
        waited = False
        await self._drain()
        aead = self._aead(key_id)
        if aead is not None:
            return aead
        while True:
            began = time.time()
            await self.refresh()
            aead = self._aead(key_id)
            if aead is not None or key_id in self._gone_ids or began > deadline:
                break
            forgotten_at = self._forgotten.get(subject)
            if forgotten_at is not None and timestamp <= forgotten_at:
                break  # written before its subject was forgotten: not a key on its way
            if not waited:
                waited = True
                log.debug("waiting for key %s of %s (written after its event)", key_id, subject)
            await asyncio.sleep(min(delay, max(deadline - time.time(), 0.0) + _FIRST_WAIT_S))
            delay = min(delay * 2, _MAX_WAIT_S)
        return aead

    def _decide(self, key_id: str, subject: str | None) -> bool:
        """A key absent after `open`'s reading: orphan (True) or forgotten (False),
        remembered (bounded). Forgotten when the topic said so (a tombstone, a forget mark
        of its subject, or no subject given: the old rule); an orphan, logged once, when no
        forget explains it."""
        if not self._any_key:
            raise CryptoError(
                f"a record is sealed with key {key_id}, but the keys topic {self.topic!r}"
                " holds no key at all: is ENTITLED_KEYS_TOPIC right?"
                " (refusing to read every event as forgotten)"
            )
        orphan = (
            subject is not None and key_id not in self._gone_ids and subject not in self._forgotten
        )
        if orphan:
            log.warning(
                "records of %s sealed with key %s are skipped: the key never reached the keys"
                " topic (its write failed; the writer was refused and wrote them again under"
                " another key)",
                subject,
                key_id,
            )
        self._remember_gone(key_id, orphan=orphan)
        return orphan

    def holds(self, key_id: str) -> bool:
        """The key is live as far as this keyring has read (`refresh` first for "now")."""
        return key_id in self.directory

    def forgotten_at(self, subject: str) -> float | None:
        """When `subject` was last forgotten, as far as this keyring has read (`refresh`
        first for "now"); None: never."""
        return self._forgotten.get(subject)

    def forgotten_since(self, subject: str, created: float) -> bool:
        """`subject` was forgotten after an event of it `created` then (`forgotten_at`):
        `seal(created=...)` seals that event with a key that is never written."""
        at = self._forgotten.get(subject)
        return at is not None and created < at

    def keys_of(self, subjects: Iterable[str]) -> list[tuple[str, str]]:
        """(subject, key id) of every live key of `subjects`."""
        wanted = set(subjects)
        return [(s, k) for k, s, _ in self.directory.items() if s in wanted]

    # -- writing ------------------------------------------------------------------------------

    async def seal(
        self, subject: str, raw: bytes, *, created: float | None = None
    ) -> tuple[bytes, tuple[str, bytes]]:
        """`seal_now`, returning once a new key is written (acks=all): for writers that
        send no event alongside (tests, benches)."""
        sealed = self.seal_now(subject, raw, created=created)
        if sealed.written is not None:
            await asyncio.shield(sealed.written)
        return sealed.value, sealed.header

    def seal_now(self, subject: str, raw: bytes, *, created: float | None = None) -> Sealed:
        """`raw` sealed with a data key of `subject` and the header naming that key; when
        the key is new (made here, or made by another call and not acknowledged yet), the
        future of its write (queued here: it leaves with the caller's event).

        `created`: when the event came to be (Stripe's `created`; for a snapshot, what it
        stems from). An event about a subject forgotten after that is sealed with a key that
        is never written (`SHREDDED`): every reader reads it as forgotten. None: not checked."""
        if created is not None and self._forgotten and self.forgotten_since(subject, created):
            self.shredded += 1
            never_written = AESGCM(new_data_key())
            header = (KEY_HEADER, (SHREDDED + secrets.token_hex(12)).encode())
            return Sealed(seal_value(never_written, raw), header)
        key_id = self.directory.newest(subject)
        aead = self._aead(key_id) if key_id is not None else None
        if aead is None or key_id is None:
            key_id, aead = self._new_key(subject)
        return Sealed(
            seal_value(aead, raw), (KEY_HEADER, key_id.encode()), self._unwritten.get(key_id)
        )

    def _new_key(self, subject: str) -> tuple[str, AESGCM]:
        """A new data key for `subject`, its write queued (`_enqueue`); the next events of
        the subject use it at once and wait for the same write (`seal_now`). Kept lean: a
        brand-new subject's webhook pays for every step (docs/erasure.md, "What encryption
        costs")."""
        key_id, data_key, nonce = new_key_material()
        record_key = _record_key(subject, key_id)
        wrapped = self.master.wrap(data_key, record_key, nonce)
        self._unwritten[key_id] = self._enqueue([(record_key, wrapped)], new=(subject, key_id))
        self.directory.put(key_id, subject, wrapped)
        return key_id, self.cache.put(key_id, data_key)

    def _keys_written(self, keys: list[tuple[str, str]], ok: bool) -> None:
        """The write of the new keys `keys` (subject, key id) is over: acknowledged (`ok`),
        or failed or cancelled."""
        if not keys:
            return
        for _, key_id in keys:
            self._unwritten.pop(key_id, None)
        if ok:
            self._any_key = True
            return
        # Dropped, not sent again: the events sealed with them were refused (their writers
        # answer an error: Stripe retries, the others write again), and those retries take
        # a new key at once instead of waiting behind a write that failed once (its producer
        # is being replaced). A write that failed late may still have landed: then the key
        # merely lives unused (forgetting tombstones it with the others).
        for subject, key_id in keys:
            log.warning("the write of key %s of %s failed; it is not used again", key_id, subject)
            self.directory.pop(key_id)
            self.cache.drop(key_id)

    async def forget(self, subjects: Iterable[str], at: float | None = None) -> list[str]:
        """Mark `subjects` forgotten at `at` (default now), tombstone every data key of them,
        then mark the topic as one keys were forgotten from (`ERASED_KEY`): one record batch
        (acks=all), the marks first, so a reader that sees a tombstone knows the mark too.
        The ids of the keys tombstoned."""
        at = time.time() if at is None else at
        wanted = sorted(set(subjects))
        await self.refresh()
        keys = self.keys_of(wanted)
        stamp = repr(at).encode()
        await self._send_all(
            [
                *((FORGOTTEN_PREFIX + s.encode(), stamp) for s in wanted),
                *((_record_key(s, k), None) for s, k in keys),
                (ERASED_KEY, str(int(at)).encode()),
            ]
        )
        for subject in wanted:
            self._forgotten[subject] = max(at, self._forgotten.get(subject, at))
        for _, key_id in keys:
            self._forget_locally(key_id)
        self._any_key = True
        return [key_id for _, key_id in keys]

    async def rotate(self) -> int:
        """Wrap every data key (and the check record) under the current master key anew;
        the number of keys rewritten. The event log is not touched."""
        await self.refresh()
        done = 0
        for key_id, subject, wrapped in list(self.directory.items()):
            if self.master.is_current(wrapped):
                continue
            record_key = _record_key(subject, key_id)
            fresh = self.master.wrap(self.master.unwrap(wrapped, record_key), record_key)
            await self._send(record_key, fresh)
            self.directory.put(key_id, subject, fresh, newest=False)
            done += 1
        await self._send(CHECK_KEY, self.master.wrap(_CHECK_PLAIN, CHECK_KEY))
        return done

    async def _send(self, key: bytes, value: bytes | None) -> None:
        """Write one record and wait for its ack (acks=all) (see `_send_all`)."""
        await self._send_all([(key, value)])

    async def _send_all(self, records: Sequence[Record]) -> None:
        """Write `records` (in order) and wait for their ack (acks=all) (see `_enqueue`)."""
        await asyncio.shield(self._enqueue(records))

    def _enqueue(
        self, records: Sequence[Record], *, new: tuple[str, str] | None = None
    ) -> asyncio.Future[None]:
        """Queue `records` (in order) for writing; the future of their ack (acks=all).
        `new`: they hold that new key (subject, key id), settled with the batch
        (`_keys_written`) before anyone waiting learns the outcome.

        Records go out together, one record batch with one future (`_flush`): those asked
        for while a batch is on its way wait for it and then all go in the next one, as
        aiokafka's own `send` gathers records behind a partition's request in flight (an
        idempotent producer sends one batch per partition per round trip). A key then costs
        an append to that batch instead of a `send` of its own with its future, shield and
        wake-ups: that per-record path cost a new subject's webhook about as much again as
        the event's own write (docs/erasure.md, "What encryption costs"). In order: a
        batch keeps its records' order, and goes out after the one before it is acked."""
        pending = self._pending
        if pending is None:
            pending = self._pending = _Pending([], asyncio.get_running_loop().create_future())
            if self._flushing is None:
                # runs once this loop iteration ends: the records asked for meanwhile join
                self._flushing = asyncio.create_task(self._flush())
        pending.records.extend(records)
        if new is not None:
            pending.keys.append(new)
        return pending.done

    async def _flush(self) -> None:
        try:
            while (pending := self._pending) is not None:
                self._pending = None
                try:
                    await self._writer(self.topic, pending.records)
                except asyncio.CancelledError:
                    self._keys_written(pending.keys, ok=False)
                    pending.done.cancel()
                    raise
                except BaseException as exc:
                    self._keys_written(pending.keys, ok=False)
                    pending.done.set_exception(exc)
                    pending.done.exception()  # retrieved: every waiter may have gone
                else:
                    self._keys_written(pending.keys, ok=True)
                    pending.done.set_result(None)
        finally:
            self._flushing = None
            if self._pending is not None:  # cancelled (stop): nobody will write these
                self._keys_written(self._pending.keys, ok=False)
                self._pending.done.cancel()
                self._pending = None

    async def _write_own(self, topic: str, records: Sequence[Record]) -> None:
        """The writer of a keyring used without an event producer (forget, rotate)."""
        async with self._write_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **client_options(self.settings),
                    client_id="entitled-keyring",
                    acks="all",
                    enable_idempotence=True,
                    max_batch_size=1024 * 1024,  # the size of a `write_records` batch
                )
                await producer.start()
                self._producer = producer
        await write_records(self._producer, topic, records)


@dataclass(slots=True)
class _Pending:
    records: list[Record]
    done: asyncio.Future[None]
    keys: list[tuple[str, str]] = field(default_factory=list)  # new keys: subject, key id


async def write_records(producer: AIOKafkaProducer, topic: str, records: Sequence[Record]) -> None:
    """`records` to partition 0 of `topic` as few record batches as they fit in, in order;
    returns once every batch is acknowledged (the producer's acks). A record batch carries
    one future, not one per record."""
    acks = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(timestamp=None, key=key, value=value) is None:  # full
            acks.append(await producer.send_batch(batch, topic, partition=0))
            batch = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value)  # one always fits
    acks.append(await producer.send_batch(batch, topic, partition=0))
    for ack in acks:
        await ack


async def key_records(settings: Settings) -> dict[str, int]:
    """Record key -> how many records holding a key (not tombstones) the keys topic has on
    the broker now, tombstoned or not: a forgotten key's material is on the disks until
    compaction has removed those records."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",  # as the keyring's reader: see `Keyring.start`
    )
    await consumer.start()
    present: dict[str, int] = {}
    try:
        tp = TopicPartition(settings.data_keys_topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, ()):
                if (
                    record.key is not None
                    and record.key not in _MARKERS
                    and not record.key.startswith(FORGOTTEN_PREFIX)  # a mark, not a key
                ):
                    name = record.key.decode("utf-8", "replace")
                    present[name] = present.get(name, 0) + (record.value is not None)
        return present
    finally:
        await consumer.stop()


def _record_key(subject: str, key_id: str) -> bytes:
    return f"{subject}/{key_id}".encode()
