"""The ingest producer's replacement after a failed write (a pure unit: the Kafka producer
is a stand-in whose deliveries, one per record batch, the test settles by hand; tests/chaos
covers real restarts)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from entitled.settings import Settings
from ingest.errors import LogUnavailable
from ingest.producer import EventProducer


@dataclass
class _Sent:
    partition: int = 0
    offset: int = 0


class _Builder(list[Any]):
    def append(self, **record: Any) -> Any:  # type: ignore[override]
        super().append(record)
        return record


@dataclass
class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}  # cus_1 -> 0, cus_2 -> 1 (one record batch in flight per partition)


@dataclass
class _Client:
    cluster: _Cluster = field(default_factory=_Cluster)


@dataclass
class _Producer:
    """Hands out one delivery future per record batch sent, settled by the test."""

    name: str
    deliveries: list[asyncio.Future[Any]] = field(default_factory=list)
    client: _Client = field(default_factory=_Client)

    def create_batch(self) -> _Builder:
        return _Builder()

    async def send_batch(self, batch: _Builder, topic: str, **_: Any) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery

    async def stop(self) -> None:
        pass


async def _until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


async def test_failures_of_a_replaced_producer_do_not_replace_its_successor() -> None:
    created: list[_Producer] = []
    events = EventProducer(
        Settings(kafka_bootstrap_servers="127.0.0.1:9", produce_timeout_s=5), seal=False
    )

    async def new_producer() -> Any:
        created.append(_Producer(f"p{len(created)}"))
        return created[-1]

    events._new_producer = new_producer  # type: ignore[method-assign]
    await events.start()

    def publish(key: str = "cus_1") -> asyncio.Task[tuple[int, int]]:
        return asyncio.create_task(events.publish(b"{}", key=key, headers=[]))

    # both in flight on p0 when the broker restarts
    first, second = publish(), publish("cus_2")
    await _until(lambda: len(created[0].deliveries) == 2)
    created[0].deliveries[0].set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(LogUnavailable):
        await first
    third = publish()  # replaces p0 by p1 first
    await _until(lambda: len(created) == 2 and created[1].deliveries)
    created[1].deliveries[0].set_result(_Sent(3, 7))
    assert await third == (3, 7)
    # p0's other write fails only now: p1 is healthy and must stay
    created[0].deliveries[1].set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(LogUnavailable):
        await second
    fourth = publish()
    await _until(lambda: len(created[1].deliveries) == 2)
    created[1].deliveries[1].set_result(_Sent(3, 8))
    assert await fourth == (3, 8)
    assert [p.name for p in created] == ["p0", "p1"]
    await events.stop()
