"""The read API with `ENTITLED_READ_DATABASE_URL` set to two real streaming replicas of the
session's PostgreSQL: reads there, catalogue writes and the change feed on the primary,
`min_event` on the replica that answers, replica lag in /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from entitled.settings import Settings
from tests.api.api_support import fold, load_catalog, running_api, subscribe_events
from tests.support import replicas as replica_support
from tests.support.polling import wait_until

replicas = replica_support.replicas  # the fixture: two replicas of the session's PostgreSQL


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


@pytest.fixture
def api(database_url: str, replicas: tuple[str, ...]) -> Iterator[httpx.Client]:
    load_catalog(database_url)
    settings = Settings(
        database_url=database_url,
        read_database_urls=replica_support.on_replicas(replicas, database_url),
        kafka_bootstrap_servers="unused:0",
    )
    with running_api(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_until(lambda: _healthy(client) == 2, 30, "both replicas healthy")
        yield client


def _metrics(client: httpx.Client, name: str) -> dict[str, float]:
    """`name`'s samples by their first label value that names a target or replica."""
    found = re.findall(
        rf'^{name}{{[^}}]*\b(?:target|replica)="([^"]+)"[^}}]*}} (\S+)$',
        client.get("/metrics").text,
        re.M,
    )
    return {key: float(value) for key, value in found}


def _healthy(client: httpx.Client) -> int:
    return sum(_metrics(client, "entitled_api_replica_healthy").values() or [0])


def _titles(client: httpx.Client, q: str) -> list[str]:
    r = client.get("/v1/search", params={"customer": "cus_nobody", "q": q})
    assert r.status_code == 200, r.text
    return [hit["title"] for hit in r.json()["results"]]


def test_reads_on_the_replicas_writes_and_feed_on_the_primary(api: httpx.Client) -> None:
    r = api.put(
        "/v1/movies/m_rep",
        json={"title": "Replicated Heist", "keywords": "zyzzyva", "groups": ["action"]},
    )
    assert r.status_code == 201, r.text  # a replica would refuse it: read-only
    wait_until(lambda: _titles(api, "zyzzyva") == ["Replicated Heist"], 10, "the replay")
    assert (
        api.delete("/v1/movies/m_rep", headers={"Content-Type": "application/json"}).status_code
        == 204
    )
    wait_until(lambda: _titles(api, "zyzzyva") == [], 10, "the delete replayed")
    assert api.get("/v1/customers").status_code == 200
    assert api.get("/v1/changes", params={"wait": 0}).status_code == 200
    assert api.get("/readyz").status_code == 200
    reads = _metrics(api, "entitled_api_reads_total")
    assert reads["primary"] == 0, reads
    assert reads["replica-1"] > 0 and reads["replica-2"] > 0, reads


def test_min_event_waits_on_the_replica_that_answers(api: httpx.Client, database_url: str) -> None:
    events = subscribe_events("cus_rep")
    fold(database_url, events)  # the real writer, on the primary
    r = api.get(
        "/v1/customers/cus_rep/entitlements",
        params={"min_event": events[-1]["id"], "wait": 5},
    )
    assert r.status_code == 200, r.text
    assert r.json()["groups"] == ["action"]
    r = api.get(
        "/v1/customers/cus_rep/entitlements",
        params={"min_event": "evt_never_sent", "wait": 0.3},
    )
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == "not_yet_folded" and r.json()["groups"] == ["action"]
    assert _metrics(api, "entitled_api_reads_total")["primary"] == 0


def test_metrics_show_each_replicas_lag(api: httpx.Client) -> None:
    seconds = _metrics(api, "entitled_api_replica_lag_seconds")
    size = _metrics(api, "entitled_api_replica_lag_bytes")
    assert set(seconds) == set(size) == {"replica-1", "replica-2"}
    assert all(v >= 0 for v in [*seconds.values(), *size.values()])
    assert 'address="127.0.0.1:' in api.get("/metrics").text
