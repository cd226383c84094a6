"""The writer's contract, in-process against real Postgres (no Kafka): redelivery, counts,
gaps, poison and parking, release, skipped events, the stamp guard, hostile text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import psycopg
import pytest

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.stripe import events as se
from projections import upserts
from projections.model.entitlements import Policy
from projections.model.events import StripeEvent
from projections.model.rows import ProductRow, Stamp
from projections.model.rules import _registry, fold
from projections.store import ApplyResult, ProjectionStore
from projections.types import Message

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
def settings(migrated_url: str) -> Settings:
    """A migrated database (a copy of the session's template); the topic is only a name here."""
    return Settings(database_url=migrated_url, topic="t.store")


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[Conn]:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as c:
        await c.set_autocommit(True)
        yield c


@pytest.fixture
def boom() -> Iterator[None]:
    """A rule that raises for product.updated while the test runs (a rule bug)."""
    saved = _registry._RULES["product.updated"]

    @fold("product.updated", table="products", override=True)
    def explode(event: StripeEvent, current: ProductRow | None) -> ProductRow:
        raise RuntimeError("rule bug")

    yield
    _registry._RULES["product.updated"] = saved


def messages(
    events: list[Mapping[str, Any]], *, partition: int = 0, start: int = 0
) -> list[Message]:
    return [
        Message(partition, start + i, routing_key(e), se.encode(e)) for i, e in enumerate(events)
    ]


def store(settings: Settings) -> ProjectionStore:
    return ProjectionStore(settings.topic, Policy())


async def one(conn: Conn, q: str, *args: Any) -> Any:
    cur = await conn.execute(q, args or None)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def group_of(conn: Conn, product: str) -> Any:
    return await one(
        conn,
        "SELECT record->'metadata'->>'subscription_group' FROM live.products WHERE id = %s",
        product,
    )


async def rebuild_from_scratch(settings: Settings, conn: Conn, batch: list[Message]) -> ApplyResult:
    """Forget the products and dedup records, then rebuild from `batch` (one transaction)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM live.products")
        await conn.execute("DELETE FROM live.processed_events")
        return await store(settings).rebuild(conn, "entitled_v1", batch)


def subscribed(customer: str, created: int, product: str = "prod_a") -> dict[str, Any]:
    sub = se.subscription(f"sub_{customer}", customer=customer, items=[("price_1", product)])
    return se.event("customer.subscription.created", sub, created=created)


PRODUCT = se.event("product.created", se.product("prod_a", groups="action"), created=100)


async def test_redelivery_and_duplicates_are_counted_once(settings: Settings, conn: Conn) -> None:
    events = [PRODUCT, subscribed("cus_1", 101), subscribed("cus_2", 102)]
    batch = messages(events)
    first = await store(settings).apply(conn, batch)
    assert (first.applied, first.duplicates, first.below_checkpoint) == (3, 0, 0)
    again = await store(settings).apply(conn, batch)  # the same records: below the checkpoint
    assert (again.applied, again.duplicates, again.below_checkpoint) == (0, 0, 3)
    # Stripe sends the same events again: new offsets, same ids; one new event among them
    redelivered = messages([*events, subscribed("cus_3", 103)], start=3)
    third = await store(settings).apply(conn, redelivered)
    assert (third.applied, third.duplicates, third.below_checkpoint) == (1, 3, 0)
    # the same id twice in one batch is applied once
    e = subscribed("cus_4", 104)
    fourth = await store(settings).apply(conn, messages([e, e], start=7))
    assert (fourth.applied, fourth.duplicates) == (1, 1)
    assert await one(conn, "SELECT count(*) FROM live.processed_events") == 5
    assert await one(conn, "SELECT next_offset FROM live.checkpoints") == 9


async def test_a_gap_applies_nothing_past_it(settings: Settings, conn: Conn) -> None:
    result = await store(settings).apply(conn, messages([PRODUCT], start=5))
    assert result.gaps == {0: 0} and result.applied == 0
    assert await one(conn, "SELECT count(*) FROM live.products") == 0


async def test_poison_parks_its_customer_and_release_folds_again(
    settings: Settings, conn: Conn, boom: None
) -> None:
    bad = se.event("product.updated", se.product("prod_b", groups="x"), created=100)
    good = subscribed("cus_1", 101)
    result = await store(settings).apply(
        conn, [*messages([bad], partition=1), *messages([good], partition=2)]
    )
    assert (result.poison, result.applied) == (1, 1)
    # a later event of the poisoned key is parked behind it
    later = se.event("product.created", se.product("prod_b", groups="y"), created=120)
    result = await store(settings).apply(conn, messages([later], partition=1, start=1))
    assert (result.parked, result.applied) == (1, 0)
    states = await (
        await conn.execute('SELECT state FROM live.dead_letters ORDER BY "offset"')
    ).fetchall()
    assert [s for (s,) in states] == ["poison", "parked"]
    # skip the poison: the parked event folds; the audit trail remains
    released = await store(settings).release(conn, "prod_b", skip_poison=True)
    assert (released.applied, released.poison) == (1, 0)
    assert await group_of(conn, "prod_b") == "y"
    assert (
        await one(
            conn, "SELECT count(*) FROM live.dead_letters WHERE state IN ('poison', 'parked')"
        )
        == 0
    )


async def test_a_skipped_event_stays_skipped_in_a_rebuild(
    settings: Settings, conn: Conn, boom: None
) -> None:
    bad = se.event("product.updated", se.product("prod_b", groups="x"), created=110)
    later = se.event("product.created", se.product("prod_b", groups="y"), created=100)
    batch = messages([bad, later], partition=1)
    await store(settings).apply(conn, batch)
    await store(settings).release(conn, "prod_b", skip_poison=True)
    _registry._RULES["product.updated"] = _registry._RULES["product.created"]  # rule "fixed"
    result = await rebuild_from_scratch(settings, conn, batch)
    # the fixed rule would now apply the skipped event; the operator's decision stands
    assert (result.skipped, result.applied) == (1, 1)
    assert await group_of(conn, "prod_b") == "y"


async def test_a_parked_key_stays_parked_from_its_first_letter_in_a_rebuild(
    settings: Settings, conn: Conn, boom: None
) -> None:
    first = se.event("product.created", se.product("prod_b", groups="x"), created=100)
    bad = se.event("product.updated", se.product("prod_b", groups="y"), created=110)
    later = se.event("product.created", se.product("prod_c", groups="z"), id="evt_l", created=120)
    later["data"]["object"]["id"] = "prod_b"
    batch = messages([first, bad, later], partition=1)
    await store(settings).apply(conn, batch)
    result = await rebuild_from_scratch(settings, conn, batch)
    assert (result.applied, result.parked + result.poison) == (1, 2)
    assert await group_of(conn, "prod_b") == "x"


async def test_quarantine_dead_letters_one_record_and_moves_the_checkpoint(
    settings: Settings, conn: Conn
) -> None:
    m = messages([subscribed("cus_q", 100)], partition=3)[0]
    result = await store(settings).quarantine(conn, m, ValueError("refused"))
    assert result.poison == 1 and result.next_offsets == {3: 1}
    assert await one(conn, "SELECT error FROM live.dead_letters") == "ValueError: refused"
    assert await one(conn, "SELECT next_offset FROM live.checkpoints WHERE partition = 3") == 1
    # the customer's next event is parked behind it
    result = await store(settings).apply(
        conn, messages([subscribed("cus_q", 101)], partition=3, start=1)
    )
    assert result.parked == 1


async def test_sql_refuses_an_older_snapshot_over_a_newer_one(
    settings: Settings, conn: Conn
) -> None:
    def row(created: int, rank: int, name: str) -> ProductRow:
        return ProductRow("prod_g", name, True, False, (), Stamp(created, rank, 0, 0, 0), name)

    async def write(row: ProductRow) -> None:
        async with conn.transaction():  # each a writer that did not see the stored row
            await upserts.write_rows(conn, "entitled_v1", {("products", "prod_g"): row})

    await write(row(200, 1, "new"))
    await write(row(100, 1, "old"))
    await write(row(200, 0, "old"))
    assert await one(conn, "SELECT event_id FROM live.products") == "new"
    await write(row(150, 2, "gone"))  # a tombstone wins whatever its second
    await write(row(300, 1, "late"))
    assert await one(conn, "SELECT event_id FROM live.products") == "gone"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("a\u0000b", "ab"),  # a real NUL: Postgres cannot store it; dropped
        ("a\\u0000b", "a\\u0000b"),  # six characters a customer typed: kept as typed
        ("\\\\u0000\"'\u202e", "\\\\u0000\"'\u202e"),
        ("x" * 100_000, "x" * 100_000),
    ],
)
async def test_text_a_customer_types_is_stored_and_never_stalls(
    settings: Settings, conn: Conn, typed: str, stored: str
) -> None:
    product = se.product("prod_t", groups="action", metadata={"note": typed}, name=typed)
    events = [se.event("product.created", product, created=100), subscribed("cus_t", 101, "prod_t")]
    result = await store(settings).apply(conn, messages(events))
    assert result.applied == 2 and result.poison == 0
    assert await one(conn, "SELECT record->'metadata'->>'note' FROM live.products") == stored
    assert await one(conn, "SELECT groups FROM live.customer_entitlements") == ["action"]


async def test_group_names_and_ids_of_any_text_round_trip(settings: Settings, conn: Conn) -> None:
    """Groups and refs are written as text[] literals built by the writer
    (`upserts.text_array`): quotes, backslashes, braces and the word NULL stay as typed."""
    groups = ['a"b', "c\\d", "{e}", "NULL", "f\tg"]
    pid = 'prod_"q\\{}'
    product = se.product(pid, groups=",".join(groups), created=100)
    events = [se.event("product.created", product, created=100), subscribed("cus_q", 101, pid)]
    result = await store(settings).apply(conn, messages(events))
    assert result.applied == 2 and result.poison == 0
    held = await one(conn, "SELECT groups FROM live.customer_entitlements")
    assert sorted(held) == sorted(groups)
    assert pid in await one(conn, "SELECT refs FROM live.subscriptions WHERE id = 'sub_cus_q'")


async def _waits_on_a_lock(watch: Conn, other: Conn) -> None:
    """Poll (with a deadline) until `other`'s backend waits on a lock."""
    pid = other.info.backend_pid
    deadline = asyncio.get_running_loop().time() + 20
    while not await one(
        watch, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", pid
    ):
        assert asyncio.get_running_loop().time() < deadline, f"backend {pid} never waited"
        await asyncio.sleep(0.02)


async def test_an_event_applied_alone_waits_for_batches_in_flight_and_holds_off_others(
    settings: Settings, conn: Conn
) -> None:
    """`apply(alone_with=...)` (an event that loses every serialization conflict): the other
    connection holds the active row FOR UPDATE while the event applies, so a batch in flight
    (its share lock held) finishes first, and no other writer can start until it committed."""
    assert settings.database_url
    url = settings.database_url
    events = [se.event("product.created", se.product("prod_alone", groups="action"))]
    schema = await one(
        conn, "SELECT v.schema_name FROM entitled.active a JOIN entitled.versions v USING (version)"
    )
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as holder,
        await psycopg.AsyncConnection.connect(url) as in_flight,
        await psycopg.AsyncConnection.connect(url) as blocker,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as watch,
    ):
        # another worker's batch, mid-transaction (its share lock on the active row)
        await in_flight.execute("SELECT 1 FROM entitled.active FOR SHARE")
        # something that stops the lone event half-way, so the test sees it hold the row
        await blocker.execute(f"LOCK TABLE {schema}.checkpoints IN EXCLUSIVE MODE")
        applying = store(settings).apply(conn, messages(events), alone_with=holder)
        alone = asyncio.create_task(applying)
        await _waits_on_a_lock(watch, holder)  # for the batch in flight
        await in_flight.rollback()
        await _waits_on_a_lock(watch, conn)  # the event applies, the row held meanwhile
        with pytest.raises(psycopg.errors.LockNotAvailable):  # another writer cannot start
            await watch.execute("SELECT 1 FROM entitled.active FOR SHARE NOWAIT")
        await blocker.rollback()
        result = await asyncio.wait_for(alone, 30)
        assert result.applied == 1
        assert await group_of(watch, "prod_alone") == "action"
        # the holder's transaction ended with the event's: others may write again
        await watch.execute("SELECT 1 FROM entitled.active FOR SHARE NOWAIT")


async def test_a_writer_follows_a_swap_and_a_dropped_version(
    settings: Settings, conn: Conn
) -> None:
    """A batch's first reads name the version the store's last batch wrote before they read
    which one is active (one round trip for all of them): after a swap they are read again
    from the active version, and when that last version was dropped the batch starts again.
    Either way the batch lands in the active version."""
    from projections import versions

    s = store(settings)

    def product(pid: str) -> list[Mapping[str, Any]]:
        return [se.event("product.created", se.product(pid, groups="action"), created=100)]

    assert (await s.apply(conn, messages(product("prod_v1")))).applied == 1
    for n, pid in ((1, "prod_v2"), (2, "prod_v3")):
        version, _schema = await versions.create(conn, f"t{n}", carry_from=None)
        await versions.mark_ready(conn, version)
        await versions.swap(conn, version)
        if n == 2:  # the store's last version (retired by this swap) is gone too
            await versions.drop(conn, version - 1)
        # a partition the new version has no checkpoint of: it continues from offset 0
        assert (await s.apply(conn, messages(product(pid), partition=n))).applied == 1
        assert await group_of(conn, pid) == "action"
