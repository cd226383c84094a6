"""The readers' edge (`processors.opening`, `Keyring.open`) when a key and its event are
written at once (docs/erasure.md, "Key order"), on real Kafka and Postgres.

A writer sends a new key and the first event sealed with it in one produce round trip, so a
reader may read the event before the key is in the keys topic: it waits for the key, never
calls the event forgotten. A key that never comes (its write failed: the writer was refused
and wrote the event again under another key) makes the record an orphan once it is older
than `key_wait_s`: skipped and counted as such, and the partition goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from entitled.crypto import KEY_HEADER, MasterKeys, new_data_key, parse_master_keys, seal_value
from entitled.kafka import client_options
from entitled.keyring import Keyring
from entitled.settings import Settings
from ingest.keys import event_headers
from ingest.producer import EventProducer
from launcher.stripe import events as se
from processors.replay import read_log
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message
from tests.support.kafka import end_offsets
from tests.support.polling import async_wait_until

CUSTOMER = "cus_key_after_event"


def _subscription_created(customer: str) -> dict[str, Any]:
    sub = se.subscription(customer=customer, items=[("price_o", "prod_o")])
    return se.event("customer.subscription.created", sub)


async def _read(settings: Settings, keyring: Keyring, ends: dict[int, int]) -> list[Message]:
    """Every record up to `ends`, opened by `keyring` as replay and the worker open them."""
    return [
        m
        async for batch in read_log(settings, settings.topic, {}, ends, keyring=keyring)
        for m in batch
    ]


async def _fold(settings: Settings, messages: list[Message]) -> Any:
    assert settings.database_url
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as c:
        await db.migrate(c)
        return await store.apply(c, messages)


async def test_an_event_read_before_its_key_is_waited_for_and_folded(settings: Settings) -> None:
    """The event is in the log, its key not yet (written by hand, in that order, as a
    writer's two records of one produce round trip may land); the reader waits for the key
    and folds the event (the old rule, one read of the keys topic, called it forgotten)."""
    reader = Keyring(settings)
    await reader.start()  # the keys topic exists, without this key ...
    await reader.seal("cus_someone_else", b"{}")  # ... but with another one
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        event = _subscription_created(CUSTOMER)
        raw = se.encode(event)
        key_id, data_key = secrets.token_hex(12), new_data_key()
        record_key = f"{CUSTOMER}/{key_id}".encode()
        wrapped = MasterKeys(parse_master_keys(settings.master_key)).wrap(data_key, record_key)
        headers = event_headers(event, source="webhook", received_at=time.time())
        await producer.send_and_wait(
            settings.topic,
            value=seal_value(AESGCM(data_key), raw),
            key=CUSTOMER.encode(),
            headers=[*headers, (KEY_HEADER, key_id.encode())],
        )
        ends = await end_offsets(settings)

        refreshes = 0
        refresh = reader.refresh

        async def counted() -> None:
            nonlocal refreshes
            await refresh()
            refreshes += 1

        reader.refresh = counted  # type: ignore[method-assign]
        reading = asyncio.create_task(_read(settings, reader, ends))
        # the reader has looked in the keys topic and not found the key ...
        await async_wait_until(lambda: refreshes >= 2 or reading.done(), timeout=20)
        assert not reading.done(), f"the reader did not wait for the key: {await reading}"
        # ... then the key lands
        await producer.send_and_wait(settings.data_keys_topic, value=wrapped, key=record_key)
        (message,) = await reading
        assert (message.forgotten, message.value) == (False, raw)
        result = await _fold(settings, [message])
        assert (result.applied, result.forgotten) == (1, 0)
    finally:
        await producer.stop()
        await reader.stop()


async def test_an_orphan_is_skipped_counted_and_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Records sealed with a key that never reached the keys topic: one older than the bound
    (an orphan at once), one recent (waited for `key_wait_s`, then an orphan), and a second
    record under the first key (no second warning); the customer's next event, under a key
    that was written, folds: the partition goes on."""
    settings = dataclasses.replace(settings, key_wait_s=1.0)
    writer = EventProducer(settings)
    await writer.start()  # creates the topics
    lost, recent = secrets.token_hex(12), secrets.token_hex(12)
    producer = AIOKafkaProducer(**client_options(settings))
    await producer.start()
    try:
        long_ago = int((time.time() - 10 * settings.key_wait_s) * 1000)
        for key_id, stamp in ((lost, long_ago), (recent, None), (lost, long_ago)):
            headers = [(KEY_HEADER, key_id.encode()), ("source", b"webhook")]
            await producer.send_and_wait(
                settings.topic,
                value=secrets.token_bytes(64),  # sealed, as far as anyone can tell
                key=CUSTOMER.encode(),
                headers=headers,
                timestamp_ms=stamp,
            )
        event = _subscription_created(CUSTOMER)
        await writer.publish(
            se.encode(event),
            key=CUSTOMER,
            headers=event_headers(event, source="webhook", received_at=time.time()),
        )
    finally:
        await producer.stop()
        await writer.stop()

    caplog.set_level(logging.WARNING, logger="entitled.keyring")
    async with Keyring(settings) as reader:
        messages = await _read(settings, reader, await end_offsets(settings))
    assert [(m.orphan, m.forgotten) for m in messages] == [(True, False)] * 3 + [(False, False)]
    warned = [r for r in caplog.records if "never reached the keys topic" in r.getMessage()]
    assert len(warned) == 2  # once per key

    result = await _fold(settings, messages)
    assert (result.orphans, result.forgotten, result.applied) == (3, 0, 1)
    assert (result.poison, result.parked) == (0, 0)
    # one partition (one customer), past the orphans: it went on
    assert list(result.next_offsets.values()) == [4]
