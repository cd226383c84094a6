"""A new subject's key and its event leave together (`EventProducer.publish`,
docs/erasure.md "Key order"); a key the broker refuses fails the write, and the next write
for that subject takes a new key and is readable. Real Kafka: the keys topic is made to
refuse every record (`max.message.bytes`), the event topic is not."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from entitled.kafka import client_options
from entitled.keyring import Keyring, keys_topic_configs
from entitled.settings import Settings
from ingest.errors import LogUnavailable
from ingest.keys import event_headers
from ingest.producer import EventProducer
from launcher.stripe import events as se
from tests.support.kafka import read_topic
from tests.support.polling import async_wait_until


async def _configure_keys_topic(settings: Settings, configs: Mapping[str, str]) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.data_keys_topic, dict(configs))]
        )
    finally:
        await admin.close()


async def test_a_refused_key_fails_the_write_and_the_next_write_takes_a_new_key(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, key_wait_s=1.0)  # the reader's bound, below
    producer = EventProducer(settings)
    await producer.start()
    customer, attempt = "cus_refused_key", [0]
    first = se.event("customer.created", se.customer(customer))

    async def publish() -> bool:
        """One webhook of `customer` (a new id each time: Stripe's retry is the same event
        but a new delivery); True when it was acknowledged."""
        attempt[0] += 1
        try:
            await producer.publish(
                se.encode(dict(first, id=f"{first['id']}_{attempt[0]}")),
                key=customer,
                headers=event_headers(first, source="webhook", received_at=time.time()),
            )
        except LogUnavailable:
            return False
        return True

    try:
        base = keys_topic_configs(settings)
        await _configure_keys_topic(settings, {**base, "max.message.bytes": "1"})
        # the broker takes the new limit within moments: until then a key may still pass
        # (a new customer each time, so that each write makes a key)
        for n in range(200):
            customer = f"cus_refused_key_{n}"
            if not await publish():
                break
        else:
            raise AssertionError("the keys topic never refused a key")
        refused = customer
        await _configure_keys_topic(settings, base)
        # the next webhook of that customer: a new key (the refused one is not used again)
        await async_wait_until(publish, timeout=20, what="a write once keys are taken again")
    finally:
        await producer.stop()

    records = [r for r in await read_topic(settings, opened=False) if r.key == refused.encode()]
    key_ids = [dict(r.headers)["entitled-key"] for r in records]
    # each write made a key of its own: a refused key is never used again
    assert len(records) >= 2 and len(set(key_ids)) == len(key_ids)
    async with Keyring(settings) as reader:
        *refused_writes, accepted = [await reader.open_record(r) for r in records]
    # a refused write's event is in the log (its key is not): an orphan, never forgotten
    assert all(o.orphan and not o.forgotten for o in refused_writes)
    assert accepted.value.startswith(b"{") and not accepted.unread
