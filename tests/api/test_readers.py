"""`api.readers` as a pure unit: which target a read goes to (no database: the
targets' pools and watchers are never touched by `pick` and `run`)."""

from __future__ import annotations

import itertools
from typing import Any, cast

import psycopg
import pytest

from api.readers import Readers, Target


def _target(name: str, *, primary: bool = False, healthy: bool = True) -> Target:
    t = Target(name, f"postgresql://h/{name}", cast(Any, None), cast(Any, None), primary=primary)
    t.healthy = healthy
    return t


def _readers(*replicas: Target) -> Readers:
    return Readers(_target("primary", primary=True), replicas)


async def _name(target: Target) -> str:
    return target.name


async def test_round_robin_over_healthy_replicas() -> None:
    readers = _readers(_target("r1"), _target("r2"))
    names = [await readers.run(_name) for _ in range(6)]
    assert sorted(names) == ["r1", "r1", "r1", "r2", "r2", "r2"]
    assert all(a != b for a, b in itertools.pairwise(names))
    assert [t.reads for t in readers.targets] == [0, 3, 3]


async def test_an_unhealthy_replica_is_skipped_and_the_primary_serves_when_none_is_left() -> None:
    r1, r2 = _target("r1"), _target("r2", healthy=False)
    readers = _readers(r1, r2)
    assert {await readers.run(_name) for _ in range(4)} == {"r1"}
    r1.healthy = False
    assert await readers.run(_name) == "primary"
    r2.healthy = True  # its health check passed again
    assert await readers.run(_name) == "r2"


async def test_a_replica_behind_a_migration_hands_the_read_on() -> None:
    r1 = _target("r1")
    readers = _readers(r1)

    async def read(target: Target) -> str:
        if not target.primary:
            raise psycopg.errors.UndefinedTable("relation does not exist")
        return target.name

    assert await readers.run(read) == "primary"
    assert not r1.healthy


async def test_no_replicas_means_the_primary() -> None:
    assert await _readers().run(_name) == "primary"


async def test_a_read_failing_on_a_replica_goes_on_to_the_next_and_marks_it() -> None:
    r1, r2 = _target("r1"), _target("r2")
    readers = _readers(r1, r2)
    broken = {"r1", "r2"}

    async def read(target: Target) -> str:
        if target.name in broken:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return target.name

    assert await readers.run(read) == "primary"  # both replicas failed, in one request
    assert (r1.healthy, r2.healthy, r1.failovers, r2.failovers) == (False, False, 1, 1)
    r1.healthy = r2.healthy = True
    broken = {"r2"}
    assert {await readers.run(read) for _ in range(4)} == {"r1"}
    assert not r2.healthy


async def test_a_failing_primary_and_other_errors_propagate() -> None:
    readers = _readers(_target("r1"))

    async def wrong(target: Target) -> str:
        raise psycopg.errors.InvalidTextRepresentation("invalid input syntax")

    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await readers.run(wrong)
    assert readers.replicas[0].healthy  # a wrong read says nothing about the server

    async def down(target: Target) -> str:
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError):
        await readers.run(down)  # the replica, then the primary: nothing left
