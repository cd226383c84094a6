"""Fold the test topic in-process as the worker does: the real `BatchRunner` and
`ProjectionStore` on real Postgres, fed from the real Kafka log, without a Faust process
(fast, and the test can look between two batches)."""

from __future__ import annotations

from typing import Any

from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import end_offsets
from processors.pool import make_pool
from processors.replay import read_log
from processors.runner import BatchRunner
from projections import offsets
from projections import schema as db
from projections.store import ApplyResult

__all__ = ["fold_log"]


async def fold_log(settings: Settings, *, batch: int = 500, **runner: Any) -> ApplyResult:
    """Fold the log from the live version's checkpoints to its end as of now; the summed
    result. Migrates first, as `entitled migrate` does."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    pool = make_pool(settings.database_url, max_size=2, name="infold")
    await pool.open()
    total = ApplyResult()
    try:
        async with pool.connection() as conn:
            await db.migrate(conn)
            schema = await db.active_schema(conn)
            start = await offsets.read(conn, schema, settings.topic)
        folder = BatchRunner(settings, pool, max_backoff_s=0.05, **runner)
        stop = await end_offsets(settings)
        async with Keyring(settings) as keyring:
            async for messages in read_log(
                settings, settings.topic, start, stop, batch=batch, keyring=keyring
            ):
                total.add(await folder.commit(messages))
    finally:
        await pool.close()
    return total
