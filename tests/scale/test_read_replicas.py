"""Reads scale out (issue 15): the read API on two real streaming replicas of the session's
PostgreSQL, with a real ingest, worker and api (`ENTITLED_READ_DATABASE_URL`).

- searches keep answering while one replica is stopped and restarted; the other serves;
- a subscription posted to ingest, folded by the worker and read with `min_event=` is
  answered by a replica at once;
- a replay swap under a search loop on the replicas: no error, no mixed answer;
- the primary stopped: searches answer from the replicas, ingest still answers 200, and the
  worker catches up once the primary is back.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import psycopg
import pytest

from entitled.settings import Settings
from launcher import services as svc
from launcher.stripe import events as se
from tests.support import replicas as replica_support
from tests.support.load import SearchLoop
from tests.support.polling import get, wait_until
from tests.support.processes import Procs
from tests.support.system import System, start_system

replicas = replica_support.replicas  # the fixture: two replicas of the session's PostgreSQL

STAR_WARS = "29"  # action + scifi in the demo catalogue
ACTION = ("3", "29")  # Die Hard, Star Wars: action movies of the demo catalogue


@pytest.fixture
def system(procs: Procs, settings: Settings, replicas: tuple[str, ...]) -> Iterator[System]:
    urls = ",".join(replica_support.on_replicas(replicas, settings.database_url or ""))
    system = start_system(procs, ENTITLED_READ_DATABASE_URL=urls)
    wait_until(
        lambda: _healthy(system.api_url) == {"replica-1", "replica-2"}, 30, "replicas", procs
    )
    yield system


def _metric(api: str, name: str, label: str) -> dict[str, float]:
    text = get(f"{api}/metrics", timeout=5).text
    found = re.findall(rf'^{name}{{[^}}]*\b{label}="([^"]+)"[^}}]*}} (\S+)$', text, re.M)
    return {key: float(value) for key, value in found}


def _reads(api: str) -> Counter[str]:
    return Counter(_metric(api, "entitled_api_reads_total", "target"))


def _model_hits(api: str) -> float:
    """Searches the read model (`api.model`) answered from memory."""
    return _metric(api, "entitled_api_read_model_searches_total", "outcome").get("hit", 0.0)


def _replicas_replayed(settings: Settings, system: System) -> bool:
    """Every replica has replayed the primary's WAL as it stands now."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert row is not None
        primary = row[0]
    for url in system.env["ENTITLED_READ_DATABASE_URL"].split(","):
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (primary,)
            ).fetchone()
            if row is None or not row[0]:
                return False
    return True


def _healthy(api: str) -> set[str]:
    try:
        gauges = _metric(api, "entitled_api_replica_healthy", "replica")
    except httpx.HTTPError:
        return set()
    return {name for name, value in gauges.items() if value == 1.0}


def _subscribe(customer: str, status: str = "active") -> list[dict[str, Any]]:
    product = se.product(f"prod_{customer}", groups="action", created=100)
    sub = se.subscription(
        f"sub_{customer}",
        customer=customer,
        items=[(f"price_{customer}", product["id"])],
        status=status,
    )
    return [
        se.event("product.created", product, created=100),
        se.event("customer.subscription.created", sub, created=200),
    ]


def _post(system: System, events: Sequence[dict[str, Any]]) -> None:
    for event in events:
        r = system.post_event(event)
        assert r.status_code == 200, r.text


def _available(body: dict[str, Any]) -> dict[str, bool]:
    return {h["movie_id"]: h["available"] for h in body["results"] if h["movie_id"] in ACTION}


def _read_after(api: str, customer: str, event_id: str) -> httpx.Response:
    params: dict[str, str | int] = {
        "customer": customer,
        "q": "",
        "limit": 100,
        "min_event": event_id,
        "wait": 10,
    }
    return httpx.get(f"{api}/v1/search", params=params, timeout=20)


def _all_ok(loop: SearchLoop) -> None:
    statuses = Counter(status for _, status in loop.answers)
    assert set(statuses) == {200}, f"{statuses} {loop.bodies_5xx[:3]}"


def test_searches_survive_a_replica_restart_and_min_event_reads_on_a_replica(
    system: System, services_settings: Settings, procs: Procs
) -> None:
    api = system.api_url
    hits = _model_hits(api)
    loop = SearchLoop(api, ["cus_nobody"], rate=20).start()
    try:
        # Searches answered from the read model count as reads of the replica that gave
        # the model its marks: the model reads where the database read path would.
        wait_until(lambda: min(_reads(api)[r] for r in ("replica-1", "replica-2")) > 5, 30, "reads")
        assert _model_hits(api) > hits, "the read model answered none of these searches"
        primary_before = _reads(api)["primary"]
        svc.stop_replica(services_settings, 2)
        wait_until(lambda: _healthy(api) == {"replica-1"}, 10, "replica 2 skipped", procs)
        down = _reads(api)
        wait_until(lambda: _reads(api)["replica-1"] > down["replica-1"] + 30, 30, "replica 1")
        assert _reads(api)["replica-2"] == down["replica-2"], "a stopped replica served"
        svc.start_replica(services_settings, 2)
        wait_until(lambda: _reads(api)["replica-2"] > down["replica-2"] + 5, 30, "replica 2 back")
        assert _reads(api)["primary"] == primary_before, "reads fell back to the primary"
    finally:
        loop.stop()
    _all_ok(loop)

    # Read your own write on a replica: the worker folds on the primary, the replica that
    # answers waits until it has replayed the event.
    events = _subscribe("cus_rw")
    before = _reads(api)
    started = time.monotonic()
    _post(system, events)
    r = _read_after(api, "cus_rw", events[-1]["id"])
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert _available(r.json())[STAR_WARS] is True
    after = _reads(api)
    assert after["primary"] == before["primary"]
    assert after["replica-1"] + after["replica-2"] > before["replica-1"] + before["replica-2"]
    assert took < 5.0, f"min_event on a replica took {took:.2f} s"
    print(f"webhook -> folded -> replayed -> answered: {took * 1000:.0f} ms")


class _Answers:
    """Searches of `customers` in a loop; each answer's action movies' availability."""

    def __init__(self, api: str, customers: Sequence[str]) -> None:
        self.api = api
        self.customers = list(customers)
        self.seen: list[tuple[int, tuple[bool, ...]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=10) as client:
            while not self.stop.is_set():
                for customer in self.customers:
                    params: dict[str, str | int] = {"customer": customer, "q": "", "limit": 100}
                    try:
                        r = client.get("/v1/search", params=params)
                    except httpx.HTTPError:
                        self.seen.append((-1, ()))
                        continue
                    flags = _available(r.json()) if r.status_code == 200 else {}
                    self.seen.append((r.status_code, tuple(flags[m] for m in sorted(flags))))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def test_replay_swap_under_searches_on_the_replicas(system: System, procs: Procs) -> None:
    customers = [f"cus_sw{i}" for i in range(4)]
    events = [e for c in customers for e in _subscribe(c)]
    _post(system, events)
    for c in customers:  # folded everywhere the loop reads
        assert _read_after(system.api_url, c, events[-1]["id"]).status_code == 200
    answers = _Answers(system.api_url, customers)
    try:
        wait_until(lambda: len(answers.seen) > 20, 30, "searches")
        # The rebuilt version entitles only trialing subscriptions: every customer loses
        # their action movies at the swap, on each replica once it replayed the swap.
        replay = procs.run(
            "replay", "--yes", "--force", name="replay", ENTITLED_ENTITLING_STATUSES="trialing"
        )
        assert replay.popen is not None and replay.popen.returncode == 0, replay.tail()
        n = len(answers.seen)
        wait_until(
            lambda: (
                len(answers.seen) > n + 20
                and all(a == (False, False) for _, a in answers.seen[-8:])
            ),
            30,
            "the new version on both replicas",
            procs,
        )
    finally:
        answers.close()
    statuses = Counter(status for status, _ in answers.seen)
    assert set(statuses) == {200}, statuses
    kinds = Counter(flags for _, flags in answers.seen)
    # one version or the other, never a mix within one answer
    assert set(kinds) == {(True, True), (False, False)}, kinds


def test_primary_down_reads_go_on_from_replicas_and_the_worker_catches_up(
    system: System, settings: Settings, services_settings: Settings, procs: Procs
) -> None:
    api = system.api_url
    first = _subscribe("cus_before")
    _post(system, first)
    assert _read_after(api, "cus_before", first[-1]["id"]).status_code == 200
    loop = SearchLoop(api, ["cus_before", "cus_nobody"], rate=20).start()
    try:
        # Both replicas hold all the primary wrote before it goes: one still replaying (a
        # loaded machine) would stay behind what the model was told, and be asked, for ever.
        wait_until(lambda: _replicas_replayed(settings, system), 30, "replicas replayed", procs)
        svc.stop_postgres(services_settings)
        try:
            during = [e for i in range(10) for e in _subscribe(f"cus_during{i}")]
            _post(system, during)  # ingest needs Kafka only
            n, hits = len(loop.answers), _model_hits(api)
            wait_until(lambda: len(loop.answers) > n + 40, 30, "searches without the primary")
            # the read model answers too: it takes its marks on the replicas
            assert _model_hits(api) > hits, "the read model answered none of these searches"
            r = get(f"{api}/readyz", timeout=5)
            assert r.status_code == 200, r.text
            pending = _read_after(api, "cus_during9", during[-1]["id"])
            assert pending.status_code == 409, pending.text
        finally:
            svc.start_postgres(services_settings)

        def caught_up() -> bool:
            r = get(
                f"{api}/v1/search",
                params={
                    "customer": "cus_during9",
                    "q": "",
                    "limit": 100,
                    "min_event": during[-1]["id"],
                },
                timeout=15,
            )
            return r.status_code == 200 and _available(r.json())[STAR_WARS]

        wait_until(caught_up, 90, "the worker to catch up and the replicas to replay", procs)
    finally:
        loop.stop()
    _all_ok(loop)
