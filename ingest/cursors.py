"""Backfill cursors, kept in a small compacted Kafka topic `<topic>.cursors`.

Key = list name, value = JSON `{"starting_after": "<last id of the last written page>",
"done": bool, "pages": n}`; a tombstone (null value) clears a list. Kafka rather than a
file or Postgres: several machines share the cursors, and ingest needs no database.
Compaction keeps the topic at one record per list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from entitled.kafka import client_options
from entitled.settings import Settings
from entitled.topics import ensure_topic


@dataclass(frozen=True)
class Cursor:
    """Where a list stands: resume after `starting_after`; `done` once its last page is in."""

    starting_after: str | None = None
    done: bool = False
    pages: int = 0


def cursor_topic(settings: Settings) -> str:
    return f"{settings.topic}.cursors"


class CursorStore:
    """Read all cursors once at start; write each after its page's events were acknowledged."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap_servers, "kafka_bootstrap_servers is not set"
        self._settings = settings
        self._replication = settings.replication_factor
        self.topic = cursor_topic(settings)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await ensure_topic(
            self._settings,
            self.topic,
            1,
            self._replication,
            {"cleanup.policy": "compact"},
        )
        self._producer = AIOKafkaProducer(
            **client_options(self._settings), acks="all", enable_idempotence=True
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def load(self) -> dict[str, Cursor]:
        """Every list's latest cursor (cleared lists are absent)."""
        tp = TopicPartition(self.topic, 0)
        consumer = AIOKafkaConsumer(
            **client_options(self._settings),
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            # An explicit offset: `seek_to_beginning` can race the initial reset to latest,
            # and `position` then reports the end before a record was read.
            consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
            cursors: dict[str, Cursor] = {}
            while await consumer.position(tp) < end:
                batches = await consumer.getmany(tp, timeout_ms=1000)
                for record in batches.get(tp, []):
                    name = (record.key or b"").decode()
                    if record.value is None:
                        cursors.pop(name, None)
                    else:
                        cursors[name] = _decode(record.value)
            return cursors
        finally:
            await consumer.stop()

    async def save(self, name: str, cursor: Cursor) -> None:
        value = orjson.dumps(
            {"starting_after": cursor.starting_after, "done": cursor.done, "pages": cursor.pages}
        )
        await self._send(name, value)

    async def clear(self, name: str) -> None:
        await self._send(name, None)

    async def _send(self, name: str, value: bytes | None) -> None:
        assert self._producer is not None, "CursorStore.start() was not called"
        await self._producer.send_and_wait(self.topic, value=value, key=name.encode())


def _decode(raw: bytes) -> Cursor:
    data: dict[str, Any] = orjson.loads(raw)
    return Cursor(
        starting_after=data.get("starting_after"),
        done=bool(data.get("done")),
        pages=int(data.get("pages") or 0),
    )
