"""Read your own writes over real HTTP: `min_event` answers once the real writer folded the
event, 409 with the current answer when it does not come, at once when it is parked."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from entitled.settings import Settings
from tests.api.api_support import ACTIVE, fold, load_catalog, running_api, subscribe_events
from tests.support.polling import wait_until

STAR_WARS = "29"  # scifi + action in the demo catalogue


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


@pytest.fixture
def db(database_url: str) -> str:
    load_catalog(database_url)
    return database_url


@pytest.fixture
def api(db: str) -> Iterator[httpx.Client]:
    settings = Settings(database_url=db, kafka_bootstrap_servers="unused:0")
    with running_api(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _star_wars(body: dict[str, Any]) -> dict[str, Any]:
    [hit] = [h for h in body["results"] if h["movie_id"] == STAR_WARS]
    return hit


def _waiting(api: httpx.Client) -> float:
    text = api.get("/metrics").text
    found = re.search(r'^entitled_api_waiting_requests{kind="min_event"} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _in_background(api: httpx.Client, path: str, **params: object) -> Future[httpx.Response]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(api.get, path, params=params)
    pool.shutdown(wait=False)
    return future


def test_read_waits_for_an_event_folded_after_it_asked(api: httpx.Client, db: str) -> None:
    events = subscribe_events("cus_rw")
    pending = _in_background(
        api,
        "/v1/search",
        customer="cus_rw",
        q="star wars",
        min_event=events[-1]["id"],
        wait=10,
    )
    wait_until(lambda: _waiting(api) == 1, 15, "the read to wait for its event")
    assert not pending.done()
    folded_at = time.monotonic()
    fold(db, events)
    response = pending.result(timeout=15)
    assert response.status_code == 200, response.text
    assert _star_wars(response.json())["reason"] == "subscription"
    assert time.monotonic() - folded_at < 9  # answered on the fold, not at the end of `wait`
    assert _waiting(api) == 0


def test_read_right_after_the_fold_and_after_a_duplicate(api: httpx.Client, db: str) -> None:
    events = subscribe_events("cus_now")
    fold(db, events)
    params = {"customer": "cus_now", "q": "star wars", "min_event": events[-1]["id"]}
    response = api.get("/v1/search", params=params)
    assert response.status_code == 200, response.text
    assert _star_wars(response.json())["available"] is True

    fold(db, [events[-1]], start=len(events))  # Stripe delivers it again
    again = api.get("/v1/search", params={**params, "wait": 0})
    assert again.status_code == 200 and _star_wars(again.json())["available"] is True

    entitlements = api.get(
        "/v1/customers/cus_now/entitlements", params={"min_event": events[-1]["id"]}
    )
    assert entitlements.status_code == 200, entitlements.text
    body = entitlements.json()
    assert body["groups"] == ["action"] and body["as_of"]["event_id"] == events[-1]["id"]


def test_event_that_never_arrives_gives_409_with_the_current_answer(
    api: httpx.Client, db: str
) -> None:
    fold(db, subscribe_events("cus_old"))
    started = time.monotonic()
    params = {"customer": "cus_old", "q": "star wars", "min_event": "evt_never", "wait": 0.7}
    response = api.get("/v1/search", params=params)
    took = time.monotonic() - started
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["reason"] == "not_yet_folded" and body["min_event"] == "evt_never"
    assert "evt_never" in body["error"]
    assert _star_wars(body)["reason"] == "subscription"  # the current answer is there
    assert 0.7 <= took < 6, took

    known = api.get("/v1/customers/cus_old/entitlements", params={**params, "wait": 0})
    assert known.status_code == 409
    assert known.json()["groups"] == ["action"] and known.json()["reason"] == "not_yet_folded"

    unknown = api.get("/v1/customers/cus_new/entitlements", params={**params, "wait": 0})
    assert unknown.status_code == 409  # not 404: the customer may be on the way
    assert unknown.json() == {
        "customer": "cus_new",
        "error": unknown.json()["error"],
        "reason": "not_yet_folded",
        "min_event": "evt_never",
    }
    assert api.get("/v1/customers/cus_new/entitlements").status_code == 404


def test_parked_event_answers_409_at_once(api: httpx.Client, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {ACTIVE}.dead_letters"
            ' (key, topic, partition, "offset", event_id, event_type, state, raw)'
            " VALUES ('cus_p', 'stripe.events', 0, 9, 'evt_parked', 'invoice.paid', 'parked',"
            " '\\x7b7d')"
        )
    started = time.monotonic()
    response = api.get(
        "/v1/search", params={"customer": "cus_p", "min_event": "evt_parked", "wait": 10}
    )
    assert response.status_code == 409 and response.json()["reason"] == "parked"
    assert "dead letters" in response.json()["error"]
    assert time.monotonic() - started < 5  # waiting longer would not help: no wait
    assert isinstance(response.json()["results"], list)
