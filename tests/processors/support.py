"""Helpers of the processor tests: a publisher into the real topic and reads of the
projection tables."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from entitled.settings import Settings
from entitled.shell.services._process import run_async
from entitled.topics import end_offsets
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer


def publish(settings: Settings, events: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Write events to the topic as the ingest does (raw bytes, key, headers)."""
    from entitled.shell import stripe_events as se

    async def go() -> list[tuple[int, int]]:
        producer = EventProducer(settings)
        await producer.start()
        try:
            out = []
            for e in events:
                out.append(
                    await producer.publish(
                        se.encode(e),
                        key=routing_key(e),
                        headers=event_headers(e, source="webhook", received_at=time.time()),
                    )
                )
            return out
        finally:
            await producer.stop()

    return run_async(go)


def query(settings: Settings, q: str, *args: Any) -> list[tuple[Any, ...]]:
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return conn.execute(q, args or None).fetchall()


def entitlements(settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    try:
        rows = query(settings, "SELECT customer, groups, movie_ids FROM live.customer_entitlements")
    except psycopg.errors.UndefinedTable:
        return {}
    return {c: (g, m) for c, g, m in rows}


def caught_up(settings: Settings) -> bool:
    """Every partition's Postgres checkpoint has reached the log end."""
    assert settings.kafka_bootstrap_servers
    ends = run_async(lambda: end_offsets(settings.kafka_bootstrap_servers or "", settings.topic))
    try:
        cps = dict(
            query(
                settings,
                "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
                settings.topic,
            )
        )
    except psycopg.errors.UndefinedTable:
        return False
    return all(cps.get(p, 0) >= e for p, e in ends.items())
