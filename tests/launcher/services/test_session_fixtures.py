"""The session fixtures give a working Kafka topic and an empty, private database."""

from __future__ import annotations

import psycopg
from aiokafka import AIOKafkaProducer

from entitled.settings import Settings


async def test_topic_accepts_writes(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        meta = await producer.send_and_wait(settings.topic, b"hello", key=b"cus_1")
    finally:
        await producer.stop()
    assert meta.topic == settings.topic
    assert 0 <= meta.partition < 8


def test_database_is_fresh(settings: Settings) -> None:
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert name is not None and name[0].startswith("t_")
    assert tables == (0,)
