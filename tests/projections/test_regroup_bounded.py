"""A product regrouped with many subscribers commits in bounded transactions (issue 19,
point 5), in-process against real Postgres: past the store's `regroup_chunk` the batch queues
the subscribers, `settle` recomputes them at most `regroup_chunk` per transaction, other
customers fold meanwhile, and every subscriber ends with the whole answer. The bound is a
setting (`ENTITLED_REGROUP_CHUNK`); here it is 3 and there are 8 subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
import pytest
from psycopg import sql

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.stripe import events as se
from projections import backlog
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

Conn = psycopg.AsyncConnection[Any]
SUBSCRIBERS = [f"cus_r{i}" for i in range(8)]
CHUNK = 3


@pytest.fixture
async def conn(migrated_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as c:
        yield c


def messages(events: list[Mapping[str, Any]], start: int) -> list[Message]:
    return [Message(0, start + i, routing_key(e), se.encode(e)) for i, e in enumerate(events)]


def subscribe(customer: str, at: int) -> dict[str, Any]:
    sub = se.subscription(
        f"sub_{customer}", customer=customer, items=[("price_pkg", "prod_pkg")], created=at
    )
    return se.event("customer.subscription.created", sub, created=at)


async def groups(conn: Conn) -> dict[str, tuple[str, ...]]:
    cur = await conn.execute("SELECT customer, groups FROM live.customer_entitlements")
    return {c: tuple(sorted(g)) for c, g in await cur.fetchall()}


async def test_a_regroup_past_the_bound_commits_in_bounded_transactions(conn: Conn) -> None:
    settings = Settings.from_env({"ENTITLED_REGROUP_CHUNK": str(CHUNK)})
    store = ProjectionStore("t.regroup", Policy(), regroup_chunk=settings.regroup_chunk)
    setup = [se.event("product.created", se.product("prod_pkg", groups="action"), created=100)]
    setup += [subscribe(c, 101 + i) for i, c in enumerate(SUBSCRIBERS)]
    await store.apply(conn, messages(setup, 0))
    assert set((await groups(conn)).values()) == {("action",)}

    regroup = se.event(
        "product.updated", se.product("prod_pkg", groups="action,bonus"), created=200
    )
    result = await store.apply(conn, messages([regroup], len(setup)))
    assert result.applied == 1
    # the batch committed the product (and its checkpoint) without the 8 subscribers
    cur = await conn.execute("SELECT count(*) FROM live.products WHERE record::text LIKE '%bonus%'")
    assert (await cur.fetchone() or (0,))[0] == 1
    assert set((await groups(conn)).values()) == {("action",)}

    # another customer folds meanwhile, the queue untouched
    other = subscribe("cus_other", 201)
    await store.apply(conn, messages([other], len(setup) + 1))
    assert (await groups(conn))["cus_other"] == ("action", "bonus")

    # what the worker's gauges and `entitled status` report while they wait
    active = await db.active_schema(conn)
    queued = await backlog.regroup_queue(conn, active)
    assert queued.customers == len(SUBSCRIBERS) and queued.oldest_s >= 0
    await conn.execute(
        sql.SQL("UPDATE {} SET queued_at = now() - interval '90 seconds'").format(
            db.qualified(active, "recompute_queue")
        )
    )
    assert 90 <= (await backlog.regroup_queue(conn, active)).oldest_s < 120

    assert await store.settle(conn) == len(SUBSCRIBERS)
    after = await groups(conn)
    assert all(after[c] == ("action", "bonus") for c in SUBSCRIBERS)
    # one transaction wrote each subscriber's row (xmin): none wrote more than the bound
    table = db.qualified(await db.active_schema(conn), "customer_entitlements")
    cur = await conn.execute(
        sql.SQL("SELECT xmin::text, count(*) FROM {} WHERE customer = ANY(%s) GROUP BY 1").format(
            table
        ),
        (SUBSCRIBERS,),
    )
    per_transaction = [n for _x, n in await cur.fetchall()]
    assert sum(per_transaction) == len(SUBSCRIBERS)
    assert max(per_transaction) <= CHUNK
    assert len(per_transaction) >= -(-len(SUBSCRIBERS) // CHUNK)
    # each subscriber's change row names the regroup, as if recomputed in its batch
    cur = await conn.execute(
        "SELECT customer, event_id FROM entitled.changes WHERE customer = ANY(%s)"
        " AND 'bonus' = ANY(groups_after)",
        (SUBSCRIBERS,),
    )
    changed = dict(await cur.fetchall())
    assert changed == {c: regroup["id"] for c in SUBSCRIBERS}
    assert await store.settle(conn) == 0  # the queue is empty
    assert await backlog.regroup_queue(conn, active) == backlog.Queued(0, 0.0)


async def test_within_the_bound_the_regroup_stays_in_its_batch(conn: Conn) -> None:
    store = ProjectionStore("t.regroup", Policy(), regroup_chunk=len(SUBSCRIBERS))
    setup = [se.event("product.created", se.product("prod_pkg", groups="action"), created=100)]
    setup += [subscribe(c, 101 + i) for i, c in enumerate(SUBSCRIBERS)]
    regroup = se.event("product.updated", se.product("prod_pkg", groups="comedy"), created=200)
    await store.apply(conn, messages(setup, 0))
    await store.apply(conn, messages([regroup], len(setup)))
    assert set((await groups(conn)).values()) == {("comedy",)}
    assert await store.settle(conn) == 0
