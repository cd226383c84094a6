"""The read model (`api.model`): searches answered from memory are never older than what the
database read path answers, through entitlement changes, catalogue writes made by another
process, a replay's swap and a rollback. Real uvicorn, real Postgres."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from api_support import entitle, load_catalog, migrate, running_api

from api.model import ReadModel
from api.watcher import Watcher
from entitled.settings import Settings
from launcher.services._process import run_async
from projections import catalog, search, versions

QUERIES = ("harrison ford", "star", "")


@pytest.fixture
def settings(database_url: str) -> Settings:
    migrate(database_url)
    load_catalog(database_url)
    return Settings(database_url=database_url, kafka_bootstrap_servers="unused:0")


@pytest.fixture
def api(settings: Settings) -> Iterator[httpx.Client]:
    with running_api(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def _api_answer(api: httpx.Client, customer: str, q: str) -> list[dict[str, Any]]:
    response = api.get("/v1/search", params={"customer": customer, "q": q, "limit": 50})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def _db_answer(url: str, customer: str, q: str) -> list[dict[str, Any]]:
    """What the database read path answers now (the statement `/v1/search` ran before)."""

    async def go() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return [h.to_json() for h in await search.search(conn, customer, q, 50)]

    return run_async(go)


def _counter(api: httpx.Client, name: str, **labels: str) -> float:
    text = api.get("/metrics").text
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{label}}} (\S+)$" if label else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _same_as_database(api: httpx.Client, url: str, customers: list[str]) -> None:
    for customer in customers:
        for q in QUERIES:
            assert _api_answer(api, customer, q) == _db_answer(url, customer, q), (customer, q)


def test_entitlement_changes_are_never_missed(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    customers = ["cus_m1", "cus_m2", "cus_unknown"]
    entitle(url, "cus_m1", groups=["action"], feed=True)
    _same_as_database(api, url, customers)
    hits = _counter(api, "entitled_api_read_model_searches_total", outcome="hit")
    # Each change is committed before the next search is sent: with no wait in between,
    # the answer must already show it (a model that lags by even one change fails here).
    for i, held in enumerate((["scifi"], [], ["action", "drama"], ["scifi"])):
        entitle(url, "cus_m1", groups=held, as_of_event=f"evt_{i}", feed=True)
        movies = ["40"] if i % 2 == 0 else []
        entitle(url, "cus_m2", movie_ids=movies, as_of_event=f"evt_{i}", feed=True)
        _same_as_database(api, url, customers)
    assert _counter(api, "entitled_api_read_model_searches_total", outcome="hit") > hits


def test_catalogue_writes_of_another_process_show_at_once(
    api: httpx.Client, settings: Settings
) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_c", groups=["comedy"], feed=True)
    _same_as_database(api, url, ["cus_c"])
    movie = catalog.Movie("m-x", "Harrison Ford Comedy Hour", "star", ["comedy"])

    async def write(step: str) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if step == "put":
                await catalog.put_movie(conn, movie)
            elif step == "ungroup":
                await catalog.remove_group(conn, "m-x", "comedy")
            else:
                await catalog.delete_movie(conn, "m-x")

    for step in ("put", "ungroup", "delete"):
        run_async(lambda step=step: write(step))  # type: ignore[misc]
        _same_as_database(api, url, ["cus_c"])


def test_replay_swap_and_rollback_empty_the_model(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_s", groups=["action"], feed=True)
    entitle(url, "cus_t", groups=["drama"], feed=True)
    _same_as_database(api, url, ["cus_s", "cus_t"])
    before = _api_answer(api, "cus_s", "harrison ford")
    flushes = _counter(api, "entitled_api_read_model_flushes_total")

    async def build_and_swap() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            version, schema = await versions.create(conn, "test", carry_from=None)
            await conn.execute(
                f"INSERT INTO {schema}.customer_entitlements (customer, groups, movie_ids)"
                " VALUES ('cus_s', '{scifi}', '{}'), ('cus_t', '{drama}', '{}')"
            )
            await versions.mark_ready(conn, version)
            await versions.swap(conn, version)
            return version

    run_async(build_and_swap)
    _same_as_database(api, url, ["cus_s", "cus_t"])
    assert _api_answer(api, "cus_s", "harrison ford") != before  # action -> scifi
    assert _counter(api, "entitled_api_read_model_flushes_total") > flushes

    async def roll_back() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await versions.swap(conn, 1, cause="rollback")

    flushes = _counter(api, "entitled_api_read_model_flushes_total")
    run_async(roll_back)
    _same_as_database(api, url, ["cus_s", "cus_t"])
    assert _counter(api, "entitled_api_read_model_flushes_total") > flushes


def test_memory_is_bounded() -> None:
    model = ReadModel(Watcher("postgresql://unused"), max_customers=2)
    model._apply(1, "cus_1", ["a"], [])
    model._apply(2, "cus_2", ["a"], [])
    model._apply(3, "cus_3", ["b"], ["7"])
    assert list(model.customers) == ["cus_2", "cus_3"]
    model._apply(2, "cus_3", [], [])  # an older change never overwrites a newer entry
    assert model.customers["cus_3"] == (3, ("b",), ("7",))
    model._apply(4, "cus_3", ["a"], [])
    assert model.customers["cus_2"][1] is model.customers["cus_3"][1]  # shared, not copied
