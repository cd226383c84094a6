"""`entitled hydrate` with the group membership the launcher hands it (issue 24): with a
`DATABASE_URL`, a SIGKILLed hydrator's partitions move to the survivor as soon as its
Postgres session ends, not after the Kafka session timeout. Two real hydrators with a 30 s
session, so that only the removal can move the partitions within the deadline."""

from __future__ import annotations

from typing import Any

from entitled.settings import Settings
from tests.support.polling import metric, seconds_until, wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs

SESSION_S = "30"


def _hydrator(procs: Procs) -> tuple[Any, str]:
    port = free_port()
    proc = procs.spawn(
        "hydrate",
        "--metrics-port",
        str(port),
        STRIPE_API_KEY="",
        ENTITLED_KAFKA_SESSION_TIMEOUT_S=SESSION_S,
    )
    return proc, f"http://127.0.0.1:{port}"


def _partitions(url: str) -> float:
    return metric(url, "entitled_hydrator_partitions") or 0.0


def test_a_killed_hydrators_partitions_move_before_its_session_ends(
    settings: Settings, procs: Procs
) -> None:
    assert settings.database_url  # what gives the hydrators their membership
    first, first_url = _hydrator(procs)
    wait_until(lambda: _partitions(first_url) == settings.partitions, 60, "one hydrator", procs)
    second, second_url = _hydrator(procs)
    wait_until(
        lambda: (
            _partitions(first_url) + _partitions(second_url) == settings.partitions
            and _partitions(second_url) > 0
        ),
        60,
        "the partitions shared by two hydrators",
        procs,
    )
    first.kill()
    taken = seconds_until(lambda: _partitions(second_url) == settings.partitions, 15)
    assert taken is not None, f"the survivor waited for the {SESSION_S} s session\n{second.tail()}"
    print(f"hydrator failover with a {SESSION_S} s session: {taken} s")
    assert "is gone" in second.tail(200), second.tail()
