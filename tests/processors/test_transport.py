"""The worker's transport starts its Kafka clients patiently (`processors.transport`): a
worker started while the broker restarts waits for it instead of crashing (the chaos test
saw Faust's producer exit the worker with "Unable to bootstrap"). Real Kafka, reached
through a TCP forwarder that opens only after the first attempts failed."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer

from entitled.settings import Settings
from processors import transport
from tests.support.ports import free_port


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_a_client_started_while_kafka_is_away_waits_for_it(settings: Settings) -> None:
    assert settings.kafka_bootstrap_servers
    host, port = settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    front = free_port()
    made: list[AIOKafkaProducer] = []

    def make() -> AIOKafkaProducer:
        made.append(AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{front}"))
        return made[-1]

    starting = asyncio.create_task(transport._started(make, "producer"))
    deadline = asyncio.get_running_loop().time() + 20
    while len(made) < 2:  # it tried, failed and tries again: not crashed
        assert not starting.done(), starting.exception()
        assert asyncio.get_running_loop().time() < deadline, "no second attempt"
        await asyncio.sleep(0.05)

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_forward(r, bw), _forward(br, w))

    server = await asyncio.start_server(pipe, "127.0.0.1", front)  # "Kafka is back"
    try:
        producer = await asyncio.wait_for(starting, 30)
        try:
            assert producer is made[-1]
            await producer.send_and_wait(settings.topic, b"x")  # a working client
        finally:
            await producer.stop()
    finally:
        server.close()
        await server.wait_closed()
