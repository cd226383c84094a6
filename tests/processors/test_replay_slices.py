"""The swap gate reads the comparison of two versions in slices (`changes.DIFF_SLICE`): it
counts the customers who differ and who lose something over all of them, the report keeps
the first ones, and a dry run's (or a refused swap's) listener is given every one, in
customer order. Real Postgres, in-process (the versions of tests/projections/
test_swap_slices.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from processors import replay, swap_gate
from projections import changes, versions
from tests.projections.test_swap_slices import Conn, expected, two_versions


@pytest.fixture
async def conn(migrated_url: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as c:
        yield c


async def test_the_gate_counts_over_every_slice(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, version, schema = await two_versions(conn)
    want = [w[0] for w in expected()]

    def judged(slice_size: int) -> Any:
        monkeypatch.setattr(changes, "DIFF_SLICE", slice_size)
        return judge()

    async def judge() -> tuple[int, replay.ReplayReport, list[str]]:
        report, seen = replay.ReplayReport(version, schema), []
        async with conn.transaction():
            lost = await replay._compare(conn, live, report, lambda d: seen.append(d))
        return lost, report, [d["customer"] for d in seen]

    monkeypatch.setattr(replay, "_KEPT", 5)
    lost, whole, seen = await judged(1000)
    assert (lost, whole.differing, seen) == (8, len(want), want)  # 6 + cus_gone + cus_é lose
    lost, sliced, seen = await judged(3)
    assert (lost, sliced.differing, seen) == (8, len(want), want)
    assert sliced.differences == whole.differences
    assert [d["customer"] for d in sliced.differences] == want[:5]

    entitled = await versions.entitled_customers(conn, live)
    why = swap_gate.refusal_by_count(lost, entitled=entitled, log_events=1, max_loss=0.2, topic="t")
    assert why is not None and "8 of the live version's 20 entitled customers" in why, why
