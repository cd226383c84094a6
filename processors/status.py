"""`entitled status`: the active version, lag per partition, dead letters."""

from __future__ import annotations

from typing import Any

import psycopg

from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import schema as db
from projections.entitlements import Policy
from projections.store import ProjectionStore


async def collect(settings: Settings) -> dict[str, Any]:
    assert settings.database_url and settings.kafka_bootstrap_servers
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        active = await db.active_schema(conn)
        _, checkpoints = await store.checkpoints(conn)
        letters = await store.dead_letters(conn)
    ends = await end_offsets(settings.kafka_bootstrap_servers, settings.topic)
    partitions = [
        {
            "partition": p,
            "checkpoint": checkpoints.get(p, 0),
            "end": end,
            "lag": max(0, end - checkpoints.get(p, 0)),
        }
        for p, end in sorted(ends.items())
    ]
    return {
        "active": active,
        "topic": settings.topic,
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
        "dead_letters": len(letters),
        "parked_customers": sorted({r["key"] for r in letters}),
    }
