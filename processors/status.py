"""`entitled status`: the active version, lag per partition (events and seconds), dead letters,
the subscribers of regrouped products still queued.

Lag in seconds is the age of the oldest event not folded yet: the `received-at` header of the
record at each partition's checkpoint, read from Kafka (`processors.lag`); 0 when caught up.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import backlog, drift
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore

from .lag import HeadReader, seconds_behind


async def collect(settings: Settings) -> dict[str, Any]:
    assert settings.database_url and settings.kafka_bootstrap_servers
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        active = await db.active_schema(conn)
        _, checkpoints = await store.checkpoints(conn)
        letters = await store.dead_letters(conn)
        queued = await backlog.regroup_queue(conn, active)
    ends = await end_offsets(settings)
    behind = {p: checkpoints.get(p, 0) for p, end in ends.items() if end > checkpoints.get(p, 0)}
    reader = HeadReader(settings, settings.topic)
    try:
        heads = await reader.read(behind)
    finally:
        await reader.close()
    now = time.time()
    partitions = [
        {
            "partition": p,
            "checkpoint": checkpoints.get(p, 0),
            "end": end,
            "lag": max(0, end - checkpoints.get(p, 0)),
            "lag_seconds": round(
                seconds_behind(heads.get(p), caught_up=p not in behind, now=now), 3
            ),
        }
        for p, end in sorted(ends.items())
    ]
    return {
        "active": active,
        "topic": settings.topic,
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
        "lag_seconds": max((p["lag_seconds"] for p in partitions), default=0.0),
        "dead_letters": len(letters),
        "parked_customers": sorted({r["key"] for r in letters}),
        "regroup_queue": queued.customers,
        "regroup_queue_oldest_s": round(queued.oldest_s, 3),
    }


async def collect_drift(settings: Settings) -> dict[str, Any]:
    """Customers whose Stripe summary and our feature derivation disagree past the grace."""
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        found = await drift.drifting(
            conn,
            statuses=tuple(settings.entitling_statuses),
            grace_s=settings.drift_grace_s,
        )
    return {"grace_s": settings.drift_grace_s, "drift": [d.as_json() for d in found]}


def render_drift(info: dict[str, Any]) -> str:
    """One line per drifting customer: which side has which lookup keys."""
    lines = [f"drift (disagreeing for over {info['grace_s']:g} s): {len(info['drift'])}"]
    for d in info["drift"]:
        ours = ", ".join(d["only_ours"]) or "-"
        theirs = ", ".join(d["only_stripe"]) or "-"
        lines.append(f"{d['customer']}: only ours: {ours}; only Stripe's summary: {theirs}")
    return "\n".join(lines)
