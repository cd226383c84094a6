"""The worker's Kafka transport: Faust's aiokafka driver with a shorter fetch wait, whose
consumer leaves the group on a clean stop even as a static member.

Faust builds its consumer with `fetch_max_wait_ms=1500`, not a setting. A fetch in flight
holds back the next fetch to its broker, and the broker answers a fetch of partitions with
nothing new only after that wait: so after a seek (a failover's seek to the Postgres
checkpoints, a seek back over a gap) a quiet partition's first records waited up to 1.5 s
(measured: "reading again after the seek: 5 in 1.51s" in tests/processors/test_worker.py).
A fetch of partitions with new records is answered at once whatever the wait.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as driver

__all__ = ["FETCH_MAX_WAIT_MS", "Transport"]

# An idle worker asks its broker this often per consumer; Kafka's own default is 500.
FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(driver.AIOKafkaConsumerThread):
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


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """Faust's aiokafka transport whose worker consumer fetches with a short wait."""

    Consumer = _Consumer
