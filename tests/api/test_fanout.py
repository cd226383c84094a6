"""The shared memory of recent changes: what it covers, one fetch per firing, trimming;
against a real, migrated Postgres (changes written as the writer writes them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from api_support import add_change

from api.fanout import Fanout
from api.watcher import Signal
from projections.feed import Change


def _change(id_: int, customer: str = "cus_a") -> Change:
    return Change(id_, customer, [], ["g"], [], [], "event", None, None, 1, datetime.now(UTC))


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


def test_after_answers_only_what_memory_covers() -> None:
    fan = Fanout(Signal())
    assert fan.after(0, None, 10) is None  # nothing fetched yet
    fan.floor, fan.top = 10, 20
    fan.recent = [_change(12), _change(15, "cus_b"), _change(20)]
    assert fan.after(9, None, 10) is None  # older than memory: the database answers
    page = fan.after(10, None, 10)
    assert page is not None and [c.id for c in page.changes] == [12, 15, 20] and page.next == 20
    page = fan.after(12, "cus_a", 10)
    assert page is not None and [c.id for c in page.changes] == [20] and page.next == 20
    page = fan.after(15, "cus_b", 10)
    assert page is not None and page.changes == [] and page.next == 20  # past the others
    page = fan.after(10, None, 2)
    assert page is not None and [c.id for c in page.changes] == [12, 15] and page.next == 15
    page = fan.after(25, None, 10)  # a cursor ahead of memory stays where it is
    assert page is not None and page.changes == [] and page.next == 25


async def test_refresh_fetches_once_per_firing_and_trims(database_url: str) -> None:
    ids = [add_change(database_url, f"cus_{i}") for i in range(3)]
    signal = Signal()
    fan = Fanout(signal, keep=2)
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)

    def connection() -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        @asynccontextmanager
        async def lend() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
            yield conn

        return lend()

    async with conn:
        await fan.refresh(connection, start=ids[0])  # a stream caught up to the first
        assert (fan.floor, fan.top, fan.fetches) == (ids[0], ids[2], 1)
        assert [c.id for c in fan.recent] == ids[1:]

        more = [add_change(database_url, f"cus_m{i}") for i in range(4)]
        await fan.refresh(connection)  # no firing since the last fetch: memory is as fresh
        assert fan.fetches == 1 and fan.top == ids[2]
        signal.fire()
        await fan.refresh(connection)
        assert fan.fetches == 2 and fan.top == more[-1]
        # Six kept > 2 * keep: trimmed to the last two; the floor moves up with it.
        assert [c.id for c in fan.recent] == more[-2:] and fan.floor == more[-3]
        assert fan.after(ids[2], None, 10) is None
        page = fan.after(more[-3], None, 10)
        assert page is not None and [c.id for c in page.changes] == more[-2:]

        await fan.refresh(connection, force=True)  # a timeout while the watcher is down
        assert fan.fetches == 3
