"""Forgetting does not depend on when other processes read the keys topic.

A process whose keyring has not read the tombstones yet (it follows the topic every second,
or it is cut off from it for longer) can still open the forgotten customer's events. Its
fold transaction must not bring them back: every fold checks, in Postgres, the key ids the
erasure recorded (`projections.erasure.screen`), and one whose snapshot is older than the
erasure fails to lock the erasure row and is retried (a serialization failure).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel

from entitled.keyring import Keyring
from entitled.settings import Settings
from launcher.stripe import events as se
from processors.forget import forget_customer
from processors.opening import open_message
from projections import erasure
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

GONE = "cus_lagging_gone"


def _history() -> list[tuple[str, dict[str, Any]]]:
    """(message key, event): a product, then the customer's subscription, then an update
    that arrives after the customer was forgotten."""
    sub = se.subscription("sub_lag", customer=GONE, items=[("price_l", "prod_lag")])
    later = dict(sub, metadata={"note": "written before the erasure, read after it"})
    return [
        ("prod_lag", se.event("product.created", se.product("prod_lag", groups="action"))),
        (GONE, se.event("customer.subscription.created", sub, created=101)),
        (GONE, se.event("customer.subscription.updated", later, created=102)),
    ]


def _after_the_forget() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two webhooks that reach the log after the forget: one Stripe created before it, one
    after it (the customer came back)."""
    sub = se.subscription("sub_lag2", customer=GONE, items=[("price_l", "prod_lag")])
    now = int(time.time())
    return (
        se.event("customer.subscription.created", sub, created=now - 600),
        se.event("customer.subscription.updated", sub, created=now + 600),
    )


async def _sealed_messages(writer: Keyring, lagging: Keyring) -> list[Message]:
    """The history sealed as ingest writes it, then opened by `lagging` now (before the
    erasure), as a worker holding them in its batch would have them."""
    out = []
    for offset, (key, event) in enumerate(_history()):
        value, header = await writer.seal(key, se.encode(event))
        out.append(await open_message(lagging, 0, offset, key.encode(), value, [header]))
    return out


async def _entitled(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute("SELECT customer FROM live.customer_entitlements")
    return {str(r[0]) for r in await cur.fetchall()}


async def test_a_process_behind_on_the_keys_topic_folds_nothing_of_a_forgotten_customer(
    settings: Settings,
) -> None:
    assert settings.database_url
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    async with (
        Keyring(settings) as writer,
        Keyring(settings) as lagging,  # never follows: it will not see the tombstones
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn,
    ):
        first, second, late = await _sealed_messages(writer, lagging)
        await db.migrate(conn)
        await store.apply(conn, [first, second])
        assert GONE in await _entitled(conn)

        done = await forget_customer(settings, GONE, requested_by="test")
        assert done.keys == 1
        # the lagging keyring still opens the event sealed before the erasure ...
        assert not late.forgotten and b"written before the erasure" in late.value
        # ... but its fold counts it as forgotten and writes nothing of them
        result = await store.apply(conn, [late])
        assert (result.forgotten, result.applied) == (1, 0)
        assert GONE not in await _entitled(conn)
        assert await erasure.leftovers(conn, GONE, done.subjects) == []
        # a poison path (quarantine) does not keep their raw event as a dead letter either
        again = Message(0, 3, GONE, late.value, key_id=late.key_id)
        assert (await store.quarantine(conn, again, ValueError("x"))).forgotten == 1
        assert await erasure.leftovers(conn, GONE, done.subjects) == []

        # Written after the forget under a key made since, by a writer that had not read it
        # (or by any writer with no `created` check): a webhook Stripe created before the
        # forget (reconcile, a late retry) never folds; one created after it folds anew.
        old, new = _after_the_forget()
        async with Keyring(settings) as behind:
            sealed = [await behind.seal(GONE, se.encode(e)) for e in (old, new)]
            replay = [
                await open_message(behind, 0, 4 + n, GONE.encode(), value, [header])
                for n, (value, header) in enumerate(sealed)
            ]
            assert not any(m.forgotten for m in replay)  # readable: a key made since
            result = await store.apply(conn, [replay[0]])
            assert (result.forgotten, result.applied) == (1, 0)
            assert GONE not in await _entitled(conn)
            result = await store.apply(conn, [replay[1]])
            assert (result.forgotten, result.applied) == (0, 1)
            assert GONE in await _entitled(conn)  # back, from what they did after the forget
            # a writer that knows of the forget seals the old one with no key at all
            value, header = await behind.seal(GONE, se.encode(old), created=old["created"])
            assert (await open_message(behind, 0, 6, None, value, [header])).forgotten


async def test_a_fold_transaction_older_than_the_erasure_is_retried_not_committed(
    settings: Settings,
) -> None:
    """A SERIALIZABLE fold whose snapshot predates the erasure's commit cannot see the erased
    keys: locking the erasure row then fails, and the retry sees them."""
    assert settings.database_url
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    url = settings.database_url
    async with (
        Keyring(settings) as writer,
        Keyring(settings) as lagging,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as folding,
    ):
        first, second, late = await _sealed_messages(writer, lagging)
        await db.migrate(conn)
        await store.apply(conn, [first, second])
        await folding.set_isolation_level(IsolationLevel.SERIALIZABLE)
        with pytest.raises(psycopg.errors.SerializationFailure):
            async with folding.transaction():
                await db.active_schema(folding, lock=True)  # its snapshot: before the erasure
                await forget_customer(settings, GONE, requested_by="test")
                await erasure.screen(folding, [late])
        retried = await erasure.screen(folding, [late])  # a new transaction: sees them
        assert [m.forgotten for m in retried] == [True]
