"""`entitled migrate` (`projections.cli`): a migration Postgres aborted as a deadlock's victim
is made again, on a real database (the rolling upgrade test saw a release's migration
deadlock with the live worker's batch and the command fail)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from projections import cli, schema


async def test_a_migration_chosen_as_a_deadlocks_victim_is_made_again(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, attempts = schema.migrate, []

    async def deadlocks_once(conn: psycopg.AsyncConnection[Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:  # as Postgres aborts the victim: the transaction is gone
            await conn.execute("SELECT 1")
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return await real(conn)

    monkeypatch.setattr(schema, "migrate", deadlocks_once)
    assert (await cli._migrate(migrated_url)).startswith("entitled_v")
    assert len(attempts) == 2


async def test_a_migration_that_keeps_deadlocking_fails_after_its_attempts(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def always(conn: psycopg.AsyncConnection[Any]) -> str:
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    monkeypatch.setattr(schema, "migrate", always)
    with pytest.raises(psycopg.errors.DeadlockDetected):
        await cli._migrate(migrated_url, attempts=2)
