"""The read model (`api.model`): searches answered from memory are never older than what the
database read path answers, give or take the delivery of a notification: through
entitlement changes, catalogue writes made by another process, a replay's swap and a
rollback; a model whose change feed is down or behind asks the database before it answers.
Real uvicorn, real Postgres, a real watcher."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from api_support import add_change, entitle, load_catalog, migrate, running_api

from api.model import Connect, ReadModel, Step
from api.watcher import Watcher
from entitled.settings import Settings
from launcher.services._process import run_async
from projections import catalog, search, versions
from tests.support.polling import async_wait_until, wait_until

# How soon a change committed by another process shows in the model's answers: the delivery
# of its notification (milliseconds: each test prints what it measured) and, were one lost,
# the watcher's poll (1 s); the rest is room for a loaded machine. The database read path
# shows it at once; the model answers within this bound (docs/http.md).
FRESHNESS_BOUND_S = 2.0

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


def _db_answers(url: str, customers: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What the database read path answers now (the statement `/v1/search` ran before) to
    each search of `customers`, on one connection."""

    async def go() -> dict[tuple[str, str], list[dict[str, Any]]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return {
                (c, q): [h.to_json() for h in await search.search(conn, c, q, 50)]
                for c in customers
                for q in QUERIES
            }

    return run_async(go)


def _counter(api: httpx.Client, name: str, **labels: str) -> float:
    text = api.get("/metrics").text
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{label}}} (\S+)$" if label else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _same_as_database(api: httpx.Client, url: str, customers: list[str]) -> bool:
    want = _db_answers(url, customers)
    return all(_api_answer(api, c, q) == answer for (c, q), answer in want.items())


async def _swap_to(url: str, label: str, groups: dict[str, str]) -> int:
    """A new version holding each customer's one group, made active (a replay's swap)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        version, schema = await versions.create(conn, label, carry_from=None)
        for customer, group in groups.items():
            await conn.execute(
                f"INSERT INTO {schema}.customer_entitlements (customer, groups, movie_ids)"
                " VALUES (%s, ARRAY[%s], '{}')",
                (customer, group),
            )
        await versions.mark_ready(conn, version)
        await versions.swap(conn, version)
        return version


def _shows_within_bound(api: httpx.Client, url: str, customers: list[str], what: str) -> float:
    """Seconds from now (a change just committed) until the API answers every search of
    `customers` as the database does; fails past `FRESHNESS_BOUND_S`. The first customer's
    first search is polled alone first, so the figure is not the cost of the comparison."""
    start = time.monotonic()
    want = _db_answers(url, customers)
    first = next(iter(want))
    wait_until(
        lambda: _api_answer(api, *first) == want[first], FRESHNESS_BOUND_S, what, interval=0.001
    )
    took = time.monotonic() - start
    wait_until(
        lambda: all(_api_answer(api, c, q) == answer for (c, q), answer in want.items()),
        max(0.0, FRESHNESS_BOUND_S - took),
        what,
    )
    assert _same_as_database(api, url, customers), f"{what}: went back"
    return took


def _current(api: httpx.Client) -> bool:
    return _counter(api, "entitled_api_read_model_current") == 1.0


def test_entitlement_changes_show_within_the_bound(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    customers = ["cus_m1", "cus_m2", "cus_unknown"]
    entitle(url, "cus_m1", groups=["action"], feed=True)
    _shows_within_bound(api, url, customers, "the first change")
    wait_until(lambda: _current(api), FRESHNESS_BOUND_S, "the model current")
    # Current: hits answer from memory, the database is not asked.
    hits = _counter(api, "entitled_api_read_model_searches_total", outcome="hit")
    checked = _counter(api, "entitled_api_read_model_checked_total")
    assert _same_as_database(api, url, customers)
    assert _counter(api, "entitled_api_read_model_searches_total", outcome="hit") > hits
    assert _counter(api, "entitled_api_read_model_checked_total") == checked
    took = []
    for i, held in enumerate((["scifi"], [], ["action", "drama"], ["scifi"])):
        entitle(url, "cus_m1", groups=held, as_of_event=f"evt_{i}", feed=True)
        movies = ["40"] if i % 2 == 0 else []
        entitle(url, "cus_m2", movie_ids=movies, as_of_event=f"evt_{i}", feed=True)
        took.append(_shows_within_bound(api, url, customers, f"change {i}"))
    print(f"commit -> shown by the model: {', '.join(f'{1000 * t:.0f}' for t in took)} ms")


def test_catalogue_writes_of_another_process_show_within_the_bound(
    api: httpx.Client, settings: Settings
) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_c", groups=["comedy"], feed=True)
    _shows_within_bound(api, url, ["cus_c"], "the change")
    movie = catalog.Movie("m-x", "Harrison Ford Comedy Hour", "star", ["comedy"])

    async def write(step: str) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if step == "put":
                await catalog.put_movie(conn, movie)
            elif step == "ungroup":
                await catalog.remove_group(conn, "m-x", "comedy")
            else:
                await catalog.delete_movie(conn, "m-x")

    took = []
    for step in ("put", "ungroup", "delete"):
        run_async(lambda step=step: write(step))  # type: ignore[misc]
        took.append(_shows_within_bound(api, url, ["cus_c"], step))
    print(f"catalogue write -> shown: {', '.join(f'{1000 * t:.0f}' for t in took)} ms")


def test_replay_swap_and_rollback_empty_the_model(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_s", groups=["action"], feed=True)
    entitle(url, "cus_t", groups=["drama"], feed=True)
    _shows_within_bound(api, url, ["cus_s", "cus_t"], "the changes")
    before = _api_answer(api, "cus_s", "harrison ford")
    flushes = _counter(api, "entitled_api_read_model_flushes_total")

    async def build_and_swap() -> int:
        return await _swap_to(url, "test", {"cus_s": "scifi", "cus_t": "drama"})

    run_async(build_and_swap)
    _shows_within_bound(api, url, ["cus_s", "cus_t"], "the swap")
    assert _api_answer(api, "cus_s", "harrison ford") != before  # action -> scifi
    assert _counter(api, "entitled_api_read_model_flushes_total") > flushes

    async def roll_back() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await versions.swap(conn, 1, cause="rollback")

    flushes = _counter(api, "entitled_api_read_model_flushes_total")
    run_async(roll_back)
    _shows_within_bound(api, url, ["cus_s", "cus_t"], "the rollback")
    assert _counter(api, "entitled_api_read_model_flushes_total") > flushes


# -- the model itself, on a real watcher: when it may answer from memory ------------------


def _connect(url: str) -> Connect:
    @asynccontextmanager
    async def connect() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            yield conn

    return connect


@asynccontextmanager
async def _model(url: str, *, follow: bool, poll_s: float = 1.0) -> AsyncIterator[ReadModel]:
    """A model and its watcher on `url`; with `follow`, following as the app's task does
    (without, it only catches up when a search makes it)."""
    watcher = Watcher(url, poll_s=poll_s)
    model = ReadModel(watcher)
    connect = _connect(url)

    async def run(step: Step) -> None:
        await step(connect)

    watcher.start()
    task = asyncio.create_task(model.follow(run)) if follow else None
    try:
        if not follow:
            await model.catch_up(connect)
        yield model
    finally:
        if task is not None:
            task.cancel()
            (ended,) = await asyncio.gather(task, return_exceptions=True)
            assert isinstance(ended, asyncio.CancelledError), ended  # not a crash of its own
        await watcher.stop()


async def _answers(model: ReadModel, url: str, customer: str) -> tuple[Any, Any]:
    """(the model's answer, the database read path's answer) to one search, in that order."""
    hits = await model.search(_connect(url), customer, "harrison ford", 50, None)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        db = await search.search(conn, customer, "harrison ford", 50)
    return [h.to_json() for h in hits], [h.to_json() for h in db]


async def _same(model: ReadModel, url: str, customer: str) -> bool:
    ours, theirs = await _answers(model, url, customer)
    return bool(ours == theirs)


@asynccontextmanager
async def _current_model(url: str, customer: str) -> AsyncIterator[ReadModel]:
    """A model that does not follow (it catches up when a search makes it), current after
    its watcher's first poll, having answered one search of `customer` (holding "action")
    as the database does."""
    entitle(url, customer, groups=["action"], feed=True)
    async with _model(url, follow=False) as model:
        await async_wait_until(model.current, 10, "the first poll")
        assert await _same(model, url, customer)  # a miss: read, kept
        yield model


async def test_a_model_behind_or_without_its_feed_asks_the_database(settings: Settings) -> None:
    url = settings.database_url
    assert url
    async with _current_model(url, "cus_d") as model:
        checked, hits = model.checked, model.hits
        assert await _same(model, url, "cus_d")
        assert (model.hits, model.checked) == (hits + 1, checked), "not from memory alone"

        # Behind: the change is announced and not applied (nothing follows here).
        entitle(url, "cus_d", groups=["drama"], as_of_event="evt_1", feed=True)
        head = await _head(url)
        await async_wait_until(lambda: _announced(model) >= head, 10, "the notification")
        assert not model.current()
        assert await _same(model, url, "cus_d")
        assert model.checked == checked + 1, "a model behind answered from memory alone"
        assert model.current()  # the search caught it up

        # LISTEN down: news may be lost, nothing is trusted.
        await model.watcher.stop()
        assert not model.current()
        entitle(url, "cus_d", groups=["scifi"], as_of_event="evt_2", feed=True)
        assert await _same(model, url, "cus_d")
        assert model.checked == checked + 2

        # A change whose notification nobody heard, then LISTEN back: not trusted before the
        # first poll, then behind what the poll saw, until a search catches it up.
        entitle(url, "cus_d", groups=["comedy"], as_of_event="evt_3", feed=True)
        model.watcher.start()
        await async_wait_until(lambda: model.watcher.announced is not None, 10, "the poll")
        assert not model.current()
        assert await _same(model, url, "cus_d")
        assert model.checked == checked + 3
        assert model.current()


async def test_a_lost_notification_shows_within_the_poll(settings: Settings) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_l", groups=["action"], feed=True)
    async with _model(url, follow=True, poll_s=0.2) as model:
        await async_wait_until(model.current, 10, "the model current")
        assert await _same(model, url, "cus_l")
        # The row and its change row, without NOTIFY: only the watcher's poll learns of it.
        entitle(url, "cus_l", groups=["scifi"], as_of_event="evt_l")
        add_change(url, "cus_l", groups=(["action"], ["scifi"]), notify=False)
        start = time.monotonic()
        await async_wait_until(lambda: _same(model, url, "cus_l"), FRESHNESS_BOUND_S, "poll")
        print(f"a change without its notification shown after {time.monotonic() - start:.2f} s")


async def test_a_notification_without_its_mark_makes_the_watcher_poll(settings: Settings) -> None:
    url = settings.database_url
    assert url
    entitle(url, "cus_p", groups=["action"], feed=True)
    async with _model(url, follow=True, poll_s=60.0) as model:  # no timed poll in this test
        await async_wait_until(model.current, 10, "the model current")
        assert await _same(model, url, "cus_p")
        entitle(url, "cus_p", groups=["scifi"], as_of_event="evt_p")
        add_change(url, "cus_p", groups=(["action"], ["scifi"]), notify=False)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_notify('entitled_changes', '')")  # no head in it
        await async_wait_until(lambda: _same(model, url, "cus_p"), FRESHNESS_BOUND_S, "a poll")


async def test_a_swap_without_differences_still_empties_the_model(settings: Settings) -> None:
    url = settings.database_url
    assert url
    async with _current_model(url, "cus_v") as model:
        flushes = model.flushes
        # nobody's rights differ: no change row
        version = await _swap_to(url, "same", {"cus_v": "action"})
        await async_wait_until(lambda: _version(model) == version, 10, "the swap's notification")
        assert not model.current()
        assert await _same(model, url, "cus_v")
        assert model.flushes == flushes + 1
        assert model.version == version and model.current()


def _announced(model: ReadModel) -> int:
    marks = model.watcher.announced
    return -1 if marks is None else marks.head


def _version(model: ReadModel) -> int | None:
    marks = model.watcher.announced
    return None if marks is None else marks.version


async def _head(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return (await search.model_read(conn)).marks.head


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
