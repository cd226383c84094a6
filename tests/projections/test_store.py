"""The writer against real Postgres, without Kafka: text Postgres cannot store."""

from __future__ import annotations

import psycopg

from entitled.settings import Settings
from entitled.shell import stripe_events as se
from ingest.keys import routing_key
from projections import schema as db
from projections.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message


async def test_a_nul_character_in_metadata_does_not_stall_the_partition(
    settings: Settings,
) -> None:
    product = se.product("prod_nul", groups="action", metadata={"note": "a\u0000b"})
    sub = se.subscription("sub_nul", customer="cus_nul", items=[("price_1", "prod_nul")])
    events = [
        se.event("product.created", product, created=100),
        se.event("customer.subscription.created", sub, created=101),
    ]
    messages = [Message(0, i, routing_key(e), se.encode(e)) for i, e in enumerate(events)]
    assert b"\\u0000" in messages[0].value
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await db.migrate(conn)
        await conn.commit()
        result = await ProjectionStore(settings.topic, Policy()).apply(conn, messages)
        assert result.applied == 2 and result.poison == 0
        cur = await conn.execute(
            "SELECT e.groups, p.record->'metadata'->>'note' FROM live.customer_entitlements e,"
            " live.products p WHERE e.customer = 'cus_nul' AND p.id = 'prod_nul'"
        )
        assert await cur.fetchall() == [(["action"], "ab")]
