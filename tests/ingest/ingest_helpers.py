"""Helpers for the ingest tests: run the app under a real uvicorn, read back the topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from starlette.applications import Starlette

from entitled.settings import Settings
from ingest.app import create_app


@dataclass(frozen=True)
class Running:
    url: str
    app: Starlette
    settings: Settings


@contextlib.asynccontextmanager
async def serve(app: Starlette, timeout: float = 30.0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and an OS-chosen port; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + timeout
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            raise RuntimeError("uvicorn exited during startup")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    app = create_app(settings)
    async with serve(app) as url:
        yield Running(url, app, settings)


async def end_offsets(settings: Settings) -> dict[int, int]:
    """End offset per partition of `settings.topic`."""
    assert settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(parts)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(
    settings: Settings, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `settings.topic` from offset 0 to the end offsets as of now."""
    assert settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(timeout):
            while not await _caught_up(consumer, ends):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, tp_records in batch.items():
                    records.extend(r for r in tp_records if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
