"""Replay's parallel bulk pass with one event id in two partitions folded by two jobs at once
(issue 19, point 7): both jobs read "not applied yet", both fold it, and the second record
of the id was a unique violation in `processed_events`, dead-lettered in the build only, so
the build differed from live. Now the ids (and the rows) a batch writes are locked before
they are read, and recording an id twice is no error.

Two writers as replay's jobs run them (READ COMMITTED, no recompute), interleaved on one
event loop so that their transactions overlap batch after batch, on real Postgres."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from entitled.settings import Settings
from launcher.stripe import events as se
from processors.pool import make_pool
from processors.runner import BatchRunner
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

BATCHES, PER_BATCH = 30, 20


@pytest.fixture
async def schema(settings: Settings) -> str:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await db.migrate(conn)
        await conn.commit()
        return await db.active_schema(conn)


async def test_two_jobs_folding_one_event_id_at_once_agree(settings: Settings, schema: str) -> None:
    assert settings.database_url
    raws = [
        se.encode(se.event("product.created", se.product(f"prod_dup{n:04d}", groups="action")))
        for n in range(BATCHES * PER_BATCH)
    ]
    pool = make_pool(settings.database_url, max_size=4, name="dup")
    await pool.open()
    try:
        jobs = [
            BatchRunner(
                settings, pool, store=ProjectionStore(settings.topic, Policy(), schema=schema)
            )
            for _ in (0, 1)
        ]

        async def job(j: int) -> None:
            # the second job walks the batches backwards: the two meet in the middle, where
            # both fold the same ids at the same moment
            order = range(BATCHES) if j == 0 else reversed(range(BATCHES))
            for k, b in enumerate(order):
                part = raws[b * PER_BATCH : (b + 1) * PER_BATCH]
                batch = [Message(j, k * PER_BATCH + i, f"k{j}", r) for i, r in enumerate(part)]
                await jobs[j].commit(batch, recompute=False)

        await asyncio.gather(job(0), job(1))
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT (SELECT count(*) FROM {schema}.dead_letters),"
                f" (SELECT count(*) FROM {schema}.processed_events),"
                f" (SELECT count(*) FROM {schema}.products)"
            )
            counts = await cur.fetchone()
    finally:
        await pool.close()
    assert counts == (0, len(raws), len(raws))
