"""Worker ids and dead copies (`processors.membership`) on the real Postgres and Kafka: ids are
unique per running copy, a taken ENTITLED_WORKER_ID is a clear error, and a copy whose
Postgres session ends is removed from the consumer group by a survivor long before its
session timeout would."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer

from entitled.kafka import client_options
from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from processors import membership as ms
from tests.support.polling import async_wait_until

SESSION_S = 30.0  # far above the deadline below: only the removal can move the partitions


async def test_ids_are_unique_and_a_taken_id_is_an_error(
    settings: Settings, migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ms, "_CLAIM_PATIENCE_S", 0.3)
    settings = replace(settings, database_url=migrated_url, consumer_group="g-ids")
    first, second = await ms.claim_membership(settings), await ms.claim_membership(settings)
    host = ms.default_host()
    assert (first.instance_id, second.instance_id) == (f"{host}-0", f"{host}-1")
    named = replace(settings, worker_id=first.instance_id)
    with pytest.raises(ms.WorkerIdTaken, match=f"ENTITLED_WORKER_ID={host}-0 is held"):
        await ms.claim_membership(named)
    await first.close()  # a clean stop: the id is free again (a restart takes it back)
    again = await ms.claim_membership(named)
    assert again.instance_id == f"{host}-0"
    await again.close()
    await second.close()


async def _static_consumer(settings: Settings, instance: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        settings.topic,
        **client_options(settings),
        group_id=settings.consumer_group,
        group_instance_id=instance,
        session_timeout_ms=int(SESSION_S * 1000),
        heartbeat_interval_ms=300,
        request_timeout_ms=int(SESSION_S * 1000) + 5000,
    )
    await consumer.start()
    return consumer


async def test_a_copy_whose_session_ends_is_removed_from_the_group(
    settings: Settings, migrated_url: str
) -> None:
    settings = replace(settings, database_url=migrated_url, consumer_group=f"g-{settings.topic}")
    await ensure_event_topic(settings)
    survivor, dead = await ms.claim_membership(settings), await ms.claim_membership(settings)
    consumers = [await _static_consumer(settings, m.instance_id) for m in (survivor, dead)]
    try:
        for m, c in zip((survivor, dead), consumers, strict=True):
            # both in the group, each holding some partitions, and the ids recorded
            await async_wait_until(lambda c=c: c.assignment(), 30, "an assignment")
            await m.joined(c._coordinator.member_id)
        await survivor._sweep()  # the watch's poll: the other copy is alive
        assert survivor.removed == 0
        # The dead copy: its Postgres session ends and its consumer says nothing to Kafka
        # (a static member's stop sends no LeaveGroup, as after a SIGKILL): Kafka alone
        # would keep its partitions for the 30 s session.
        await dead._drop_conn()  # the connection closes, the row stays (no clean stop)
        await consumers.pop().stop()
        killed = time.monotonic()

        async def removed() -> bool:  # the watch's polls (Postgres ends the session and
            await survivor._sweep()  # frees the lock a moment after the client closed it)
            return survivor.removed == 1

        await async_wait_until(removed, 10, "the survivor to remove the dead copy")
        everything = settings.partitions
        await async_wait_until(
            lambda: len(consumers[0].assignment()) == everything, 15, "every partition"
        )
        print(f"moved in {time.monotonic() - killed:.2f} s")
    finally:
        for c in consumers:
            await c.stop()
        await survivor.close()
