"""`replay --customer` reads the customer's partition first, holding nothing, then locks the
checkpoint and reads only the tail (issue 19, point 6): it held the partition's checkpoint
row while it read the partition from offset 0 of a log kept for ever, and the live worker
waited for the whole scan. Real Kafka and Postgres; the scan is observed from outside."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from entitled.settings import Settings
from launcher.stripe import events as se
from processors import rebuild
from tests.support.db import active_schema, entitlements
from tests.support.infold import fold_log
from tests.support.kafka import publish


async def test_the_scan_holds_no_lock_and_the_tail_is_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = "cus_rebuild6"
    product = se.event("product.created", se.product("prod_r6", groups="action"), created=1000)
    sub = se.subscription(customer=customer, items=[("price_r6", "prod_r6")])
    publish(settings, [product, se.event("customer.subscription.created", sub, created=1001)])
    await fold_log(settings)
    schema = active_schema(settings)
    partition = rebuild.partition_of(customer, settings.partitions)
    scans: list[bool] = []  # per read of the log: could the worker lock the checkpoint?
    original = rebuild.read_log

    async def watched(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        assert settings.database_url
        async with await psycopg.AsyncConnection.connect(settings.database_url) as worker:
            try:
                await worker.execute(
                    f"SELECT 1 FROM {schema}.checkpoints WHERE partition = %s FOR UPDATE NOWAIT",
                    (partition,),
                )
                scans.append(True)
            except psycopg.errors.LockNotAvailable:
                scans.append(False)
        async for batch in original(*args, **kwargs):
            yield batch

    monkeypatch.setattr(rebuild, "read_log", watched)
    done = await rebuild.rebuild_customer(settings, customer)
    assert done["events"] == 1 and entitlements(settings)[customer] == (["action"], [])
    assert scans[0] is True  # the scan from offset 0 ran while the worker could fold
