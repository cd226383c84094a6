"""The change feed over real HTTP (uvicorn) against a real, migrated Postgres: the long-poll
and the Server-Sent Events stream, fed by the real writer or by rows written as it does."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from api_support import add_change, fold, running_api

from api import feed as api_feed
from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.polling import wait_until


@pytest.fixture
def settings(migrated_url: str) -> Settings:
    return Settings(database_url=migrated_url, kafka_bootstrap_servers="unused:0")


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    with running_api(settings) as base:
        yield base


@pytest.fixture
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=70) as client:
        yield client


def _metric(api: httpx.Client, name: str) -> float:
    text = api.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _pool_stats(api: httpx.Client) -> dict[str, float]:
    text = api.get("/metrics").text
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^entitled_api_pool{stat="(\w+)"} (\S+)$', text, re.M)
    }


WAITING_CHANGES = 'entitled_api_waiting_requests{kind="changes"}'


def _subscription_events(customer: str, group: str = "action") -> list[dict[str, Any]]:
    product = se.product(f"prod_{customer}", groups=group)
    sub = se.subscription(
        f"sub_{customer}", customer=customer, items=[(f"price_{customer}", product["id"])]
    )
    return [
        se.event("product.created", product, created=100),
        se.event("customer.subscription.created", sub, created=200),
    ]


def _long_poll(api: httpx.Client, **params: object) -> Future[httpx.Response]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(api.get, "/v1/changes", params=params)
    pool.shutdown(wait=False)
    return future


# -- long-poll -------------------------------------------------------------------------------


def test_long_poll_pages_and_cursor(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    empty = api.get("/v1/changes", params={"wait": 0})
    assert empty.status_code == 200 and empty.json() == {"changes": [], "next": 0}

    first = add_change(url, "cus_a", groups=(["drama"], ["drama", "action"]), event_id="evt_1")
    second = add_change(url, "cus_b", movies=(["40"], []), event_id=None)
    third = add_change(url, "cus_a", groups=(["drama", "action"], []))
    assert first < second < third

    body = api.get("/v1/changes", params={"after": 0}).json()
    assert [c["id"] for c in body["changes"]] == [first, second, third]
    assert body["next"] == third
    change = body["changes"][0]
    assert change["customer"] == "cus_a" and change["cause"] == "event"
    assert change["groups"] == {
        "before": ["drama"],
        "after": ["drama", "action"],
        "added": ["action"],
        "removed": [],
    }
    assert change["movies"] == {"before": [], "after": [], "added": [], "removed": []}
    assert change["event_id"] == "evt_1" and change["event_created"] == 1_700_000_000
    assert change["version"] == 1 and change["created_at"].startswith("20")
    assert body["changes"][1]["movies"]["removed"] == ["40"]
    assert body["changes"][1]["event_id"] is None

    page = api.get("/v1/changes", params={"after": 0, "limit": 2}).json()
    assert [c["id"] for c in page["changes"]] == [first, second] and page["next"] == second
    rest = api.get("/v1/changes", params={"after": page["next"]}).json()
    assert [c["id"] for c in rest["changes"]] == [third] and rest["next"] == third
    done = api.get("/v1/changes", params={"after": third, "wait": 0}).json()
    assert done == {"changes": [], "next": third}

    # One customer: only theirs, and the cursor still moves past the others' changes.
    mine = api.get("/v1/changes", params={"after": first, "customer": "cus_a"}).json()
    assert [c["id"] for c in mine["changes"]] == [third] and mine["next"] == third
    none = api.get("/v1/changes", params={"after": 0, "customer": "cus_z", "wait": 0}).json()
    assert none == {"changes": [], "next": third}


def test_long_poll_answers_when_a_folded_change_arrives(
    api: httpx.Client, settings: Settings
) -> None:
    assert settings.database_url
    pending = _long_poll(api, after=0, wait=40, customer="cus_fold")
    wait_until(lambda: _metric(api, WAITING_CHANGES) == 1, 15, "the long-poll to wait")
    assert not pending.done()

    folded_at = time.monotonic()
    fold(settings.database_url, _subscription_events("cus_fold"))
    response = pending.result(timeout=45)
    answered_in = time.monotonic() - folded_at
    assert response.status_code == 200, response.text
    [change] = response.json()["changes"]
    assert change["customer"] == "cus_fold"
    assert change["groups"]["added"] == ["action"] and change["cause"] == "event"
    assert change["event_id"].startswith("evt_")
    assert answered_in < 10, answered_in  # well before its 40 s wait ran out
    assert _metric(api, WAITING_CHANGES) == 0


def test_long_poll_wakes_without_notify(api: httpx.Client, settings: Settings) -> None:
    """NOTIFY is a shortcut, never the only wake-up: a change nobody announced (missed
    notification, a replica) is found by the shared poll."""
    assert settings.database_url
    pending = _long_poll(api, after=0, wait=40)
    wait_until(lambda: _metric(api, WAITING_CHANGES) == 1, 15, "the long-poll to wait")
    quiet = add_change(settings.database_url, "cus_quiet", groups=([], ["kids"]), notify=False)
    started = time.monotonic()
    response = pending.result(timeout=45)
    assert [c["id"] for c in response.json()["changes"]] == [quiet]
    assert time.monotonic() - started < 10


def test_long_poll_empty_after_wait(api: httpx.Client) -> None:
    started = time.monotonic()
    response = api.get("/v1/changes", params={"after": 0, "wait": 0.6})
    took = time.monotonic() - started
    assert response.json() == {"changes": [], "next": 0}
    assert 0.6 <= took < 5, took


# -- Server-Sent Events ----------------------------------------------------------------------


@dataclass
class Message:
    event: str | None
    id: str | None
    data: str
    comments: list[str]


class EventStream:
    """A minimal Server-Sent Events reader (the text/event-stream format) over httpx."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.retry: str | None = None

    def next(self) -> Message:
        event = id_ = None
        data: list[str] = []
        comments: list[str] = []
        for line in self.lines:
            if line == "":
                if data or comments or id_ is not None:
                    return Message(event, id_, "\n".join(data), comments)
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                id_ = value
            elif field == "retry":
                self.retry = value
        raise EOFError("stream ended")

    def change(self) -> Message:
        """The next change event (skipping keepalive comments)."""
        while True:
            msg = self.next()
            if msg.event == "change":
                return msg


@pytest.fixture
def sse(url: str) -> Iterator[httpx.Client]:
    # The read timeout bounds each wait for a line: a stream that stalls fails the test.
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=20)) as client:
        yield client


def test_stream_resumes_with_last_event_id_without_loss_or_duplicates(
    sse: httpx.Client, api: httpx.Client, settings: Settings
) -> None:
    db = settings.database_url
    assert db
    before = [add_change(db, f"cus_{i}", groups=([], ["g"])) for i in range(3)]

    with sse.stream("GET", "/v1/changes/stream", params={"after": 0}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        ready = stream.next()
        assert ready.event == "ready" and ready.id == "0" and stream.retry == "2000"
        got = [stream.change() for _ in range(3)]
        assert [int(m.id or 0) for m in got] == before
        assert '"customer":"cus_0"' in got[0].data
        # A change while connected arrives as it happens.
        live = add_change(db, "cus_live", movies=([], ["7"]))
        assert int(stream.change().id or 0) == live
        last_seen = live
    wait_until(lambda: _metric(api, "entitled_api_change_streams") == 0, 15, "the stream to end")

    # Disconnected: these happen meanwhile.
    missed = [add_change(db, f"cus_m{i}", groups=(["g"], [])) for i in range(4)]
    headers = {"Last-Event-ID": str(last_seen)}
    with sse.stream("GET", "/v1/changes/stream", headers=headers) as response:
        stream = EventStream(response)
        assert stream.next().id == str(last_seen)  # ready: resumes where the client was
        got = [stream.change() for _ in range(4)]
        assert [int(m.id or 0) for m in got] == missed
        after = add_change(db, "cus_after")
        assert int(stream.change().id or 0) == after  # nothing twice, nothing lost
        assert _metric(api, "entitled_api_change_streams") == 1
    wait_until(lambda: _metric(api, "entitled_api_change_streams") == 0, 15, "the stream to end")


def test_stream_without_cursor_starts_at_the_head_and_keeps_alive(
    sse: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = settings.database_url
    assert db
    monkeypatch.setattr(api_feed, "HEARTBEAT_S", 0.3)
    old = add_change(db, "cus_old")
    with sse.stream("GET", "/v1/changes/stream", params={"customer": "cus_new"}) as response:
        stream = EventStream(response)
        ready = stream.next()
        assert ready.event == "ready" and ready.id == str(old)  # old news is not replayed
        add_change(db, "cus_other")  # filtered out
        mine = add_change(db, "cus_new", groups=([], ["kids"]))
        quiet = stream.next()
        while quiet.event is not None:  # a keepalive comment comes when nothing happens
            assert quiet.event == "change" and quiet.id == str(mine)
            quiet = stream.next()
        assert quiet.comments == ["keepalive"]


def test_stream_token_in_query_only_for_the_stream(settings: Settings) -> None:
    with (
        running_api(replace(settings, api_token="s3cret")) as base,
        httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=20)) as client,
    ):
        assert client.get("/v1/changes/stream").status_code == 401
        assert client.get("/v1/changes/stream", params={"token": "nope"}).status_code == 401
        assert client.get("/v1/changes", params={"token": "s3cret", "wait": 0}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/changes", params={"wait": 0}, headers=auth).status_code == 200
        for kwargs in ({"params": {"token": "s3cret"}}, {"headers": auth}):
            with client.stream("GET", "/v1/changes/stream", **kwargs) as response:  # type: ignore[arg-type]
                assert response.status_code == 200
                assert EventStream(response).next().event == "ready"


def test_stream_of_many_clients_holds_no_connections(
    sse: httpx.Client, api: httpx.Client, settings: Settings
) -> None:
    """Idle streams wait on the shared watcher: the pool does not grow with them, and a
    change reaches them all through one fetch."""
    db = settings.database_url
    assert db
    clients = 25
    opened = threading.Barrier(clients + 1)
    done = threading.Event()
    received: list[int] = []

    def listen() -> None:
        with sse.stream("GET", "/v1/changes/stream", params={"after": 0}) as response:
            stream = EventStream(response)
            stream.next()
            opened.wait(30)
            received.append(int(stream.change().id or 0))
            done.wait(30)

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    opened.wait(30)
    wait_until(lambda: _metric(api, "entitled_api_change_streams") == clients, 15, "streams")

    def settled() -> bool:  # every stream idle: the pool holds nothing for them
        stats = _pool_stats(api)
        return stats["requests_waiting"] == 0 and stats["pool_available"] == stats["pool_size"]

    wait_until(settled, 15, "the streams to go idle")
    assert _pool_stats(api)["pool_size"] <= 10
    queries_before = _pool_stats(api)["requests_num"]
    change = add_change(db, "cus_fan")
    wait_until(lambda: len(received) == clients, 20, "every stream to get the change")
    assert set(received) == {change}
    # One fetch served every stream (shared memory of recent changes), not one per stream.
    assert _pool_stats(api)["requests_num"] - queries_before <= 5
    done.set()
    for t in threads:
        t.join(30)
    wait_until(lambda: _metric(api, "entitled_api_change_streams") == 0, 15, "streams to end")
