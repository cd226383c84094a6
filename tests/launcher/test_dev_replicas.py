"""`entitled dev --replicas 1`: the read API reads from a streaming replica it started."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from entitled.settings import Settings
from tests.launcher.test_dev import (  # the `entitled dev` harness
    api_base,
    can_watch,
    dev_environment,
    private_home,  # noqa: F401  (fixture)
    processes_of,
    running,
)
from tests.support.polling import get, wait_until

# It runs `entitled dev` (its own Kafka, PostgreSQL and processes): the integration tier.
pytestmark = pytest.mark.integration


def _reads(api: str) -> dict[str, float]:
    text = get(f"{api}/metrics", timeout=5).text
    reads = {}
    for line in text.splitlines():
        if line.startswith("entitled_api_reads_total{"):
            target = line.split('target="', 1)[1].split('"', 1)[0]
            reads[target] = float(line.rsplit(" ", 1)[1])
    return reads


def test_dev_with_a_replica_serves_searches_from_it(private_home: Path) -> None:  # noqa: F811
    env = dev_environment(private_home, Settings().cache)
    with running(env, "--replicas", "1") as run:
        fields = run.wait_ready()
        api = api_base(fields)
        assert "the read API reads from postgresql://" in run.text()
        wait_until(
            lambda: can_watch(api, "cus_demo_alice", "die hard", "Die Hard", "subscription"),
            30,
            "alice's demo subscription, read on the replica",
            run,
        )
        reads = _reads(api)
        assert reads.get("replica-1", 0) > 0, reads
        assert "replica-1" in httpx.get(f"{api}/metrics", timeout=5).text
        assert run.interrupt() == 0, run.text()
    left = processes_of(private_home)
    assert not left, "\n".join(left)
