"""The keyring against the session Kafka: keys written before use, read by other processes,
forgotten by tombstones, proven at start, re-wrapped by a rotation."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from entitled.crypto import CryptoError, WrongMasterKey, new_master_key
from entitled.kafka import client_options
from entitled.keyring import CHECK_KEY, ERASED_KEY, FORGOTTEN_PREFIX, Keyring, keys_topic_configs
from entitled.settings import Settings
from entitled.topics import ensure_topic
from launcher.services import Endpoints
from tests.support.polling import async_wait_until


@pytest.fixture
def keys_settings(services: Endpoints) -> Settings:
    name = f"t.{uuid.uuid4().hex[:8]}"
    return Settings(
        kafka_bootstrap_servers=services.bootstrap,
        topic=name,
        keys_topic=f"{name}.keys",
        master_key=new_master_key(),
    )


async def test_a_key_written_by_one_process_opens_in_another(keys_settings: Settings) -> None:
    async with Keyring(keys_settings) as writer, Keyring(keys_settings) as reader:
        sealed, header = await writer.seal("cus_1", b'{"email": "a@example.com"}')
        assert b"example" not in sealed
        # the reader started before the key existed: a miss reads the topic again
        opened = await reader.open(sealed, [header])
        assert opened.value == b'{"email": "a@example.com"}' and not opened.forgotten
        plain = await reader.open(b"{}", [("source", b"webhook")])
        assert plain.value == b"{}" and not plain.sealed


async def test_a_key_the_reader_fetched_already_opens_without_asking_for_the_end(
    keys_settings: Settings,
) -> None:
    """A reader meets an event whose key was written after it started (a new subject: key
    and event go out together). Its consumer's fetch brings the key on its own; opening the
    event then uses it without asking the broker for the topic's end (a round trip that
    sat on every batch of new subjects, issue 21)."""
    async with Keyring(keys_settings) as writer, Keyring(keys_settings) as reader:
        sealed, header = await writer.seal("cus_new", b'{"id": "evt_1"}')
        tp = TopicPartition(keys_settings.data_keys_topic, 0)
        end = (await reader._probe.end_offsets([tp]))[tp]  # type: ignore[union-attr]
        consumer = reader._consumer
        assert consumer is not None
        # the consumer's own fetch has seen the key's record (no request of the test's)
        await async_wait_until(lambda: (consumer.highwater(tp) or 0) >= end, timeout=10)
        asked = 0
        probe = reader._probe
        assert probe is not None
        ask = probe.end_offsets

        async def counted(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
            nonlocal asked
            asked += 1
            return await ask(partitions)

        probe.end_offsets = counted  # type: ignore[method-assign]
        opened = await reader.open(sealed, [header], subject="cus_new", timestamp=time.time())
        assert opened.value == b'{"id": "evt_1"}' and not opened.forgotten
        assert asked == 0


async def test_forgetting_tombstones_every_key_of_a_subject(keys_settings: Settings) -> None:
    async with Keyring(keys_settings) as one, Keyring(keys_settings) as two:
        first, h1 = await one.seal("cus_1", b"one")
        second, h2 = await two.seal("cus_1", b"two")  # two writers, two keys
        other, h3 = await one.seal("cus_2", b"other")
        assert h1 != h2
        assert len(await one.forget(["cus_1"])) == 2
    async with Keyring(keys_settings) as fresh:
        assert (await fresh.open(first, [h1])).forgotten
        assert (await fresh.open(second, [h2])).forgotten
        assert (await fresh.open(other, [h3])).value == b"other"
        # a later event about the customer starts a new key
        again, h4 = await fresh.seal("cus_1", b"again")
        assert h4 not in (h1, h2)
        assert (await fresh.open(again, [h4])).value == b"again"


async def test_a_follower_sees_tombstones_written_elsewhere(keys_settings: Settings) -> None:
    async with Keyring(keys_settings) as writer, Keyring(keys_settings) as reader:
        sealed, header = await writer.seal("cus_1", b"x")
        assert (await reader.open(sealed, [header])).value == b"x"
        await writer.forget(["cus_1"])
        await reader.refresh()  # what `follow` does every keys_follow_s
        assert (await reader.open(sealed, [header])).forgotten


async def test_a_wrong_master_key_stops_the_start(keys_settings: Settings) -> None:
    async with Keyring(keys_settings) as writer:
        await writer.seal("cus_1", b"x")
    wrong = replace(keys_settings, master_key=new_master_key())
    with pytest.raises(WrongMasterKey, match="wrong master key"):
        await Keyring(wrong).start()


async def test_rotation_rewraps_every_key_without_touching_the_values(
    keys_settings: Settings,
) -> None:
    async with Keyring(keys_settings) as writer:
        sealed, header = await writer.seal("cus_1", b"kept")
    new = new_master_key()
    both = replace(keys_settings, master_key=f"{new},{keys_settings.master_key}")
    async with Keyring(both) as rotating:
        assert await rotating.rotate() == 1
    only_new = replace(keys_settings, master_key=new)
    async with Keyring(only_new) as reader:
        assert (await reader.open(sealed, [header])).value == b"kept"
    with pytest.raises(WrongMasterKey):
        await Keyring(keys_settings).start()  # the old master key alone no longer opens


async def test_a_wrong_keys_topic_is_an_error_not_a_log_of_forgotten_events(
    keys_settings: Settings,
) -> None:
    async with Keyring(keys_settings) as writer:
        sealed, header = await writer.seal("cus_1", b"x")
    elsewhere = replace(keys_settings, keys_topic=f"{keys_settings.keys_topic}.other")
    async with Keyring(elsewhere) as reader:
        with pytest.raises(CryptoError, match="ENTITLED_KEYS_TOPIC"):
            await reader.open(sealed, [header])


async def _records(settings: Settings) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the keys topic as stored on the broker now, tombstones included."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.data_keys_topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out = []
        while await consumer.position(tp) < end:
            for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, ()):
                out.append((r.key, r.value))
        return out
    finally:
        await consumer.stop()


async def test_a_topic_whose_every_key_was_forgotten_and_compacted_reads_as_forgotten(
    keys_settings: Settings,
) -> None:
    """Compaction removes a forgotten key and, later, its tombstone: a keys topic can end up
    with no key at all while the log holds sealed records. The erasure mark tells that apart
    from a wrong keys topic (the test above): those events read as forgotten. The subject's
    forget mark outlives its tombstone: a writer started after compaction still seals an
    event about them created before the forget with no key at all (a webhook Stripe retries
    late, a reconcile), and one created after it with a new key."""
    s = keys_settings
    # the topic made first with tiny segments and tombstones dropped at once after cleaning
    tiny = {"segment.ms": "300", "max.compaction.lag.ms": "300", "delete.retention.ms": "0"}
    await ensure_topic(s, s.data_keys_topic, 1, configs={**keys_topic_configs(s), **tiny})
    async with Keyring(s) as writer:
        sealed, header = await writer.seal("cus_1", b"x")
        await writer.forget(["cus_1"], at=1000.0)
    check = next(v for k, v in await _records(s) if k == CHECK_KEY)
    producer = AIOKafkaProducer(**client_options(s))
    await producer.start()

    async def compacted() -> bool:
        # a segment rolls only on an append: append the check record again (no data key)
        await producer.send_and_wait(s.data_keys_topic, check, key=CHECK_KEY, partition=0)
        return not any(k is not None and k.startswith(b"cus_1/") for k, _ in await _records(s))

    try:
        await async_wait_until(compacted, 90, "compaction removed the key and its tombstone")
    finally:
        await producer.stop()
    left = [k for k, _ in await _records(s)]
    assert all(k in (CHECK_KEY, ERASED_KEY) or k == FORGOTTEN_PREFIX + b"cus_1" for k in left)
    async with Keyring(s) as reader:
        assert (await reader.open(sealed, [header])).forgotten
        assert reader.forgotten_at("cus_1") == 1000.0
        before, before_header = await reader.seal("cus_1", b"old", created=999.0)
        after, after_header = await reader.seal("cus_1", b"new", created=1001.0)
    async with Keyring(s) as elsewhere:
        assert (await elsewhere.open(before, [before_header])).forgotten
        assert (await elsewhere.open(after, [after_header])).value == b"new"
    written = [k for k, _ in await _records(s) if k is not None]
    assert not any(k.endswith(b"/" + before_header[1]) for k in written)  # no key at all
    assert any(k.endswith(b"/" + after_header[1]) for k in written)
