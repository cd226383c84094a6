"""The read API over real HTTP (uvicorn) against a real, migrated Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from api_support import entitle, load_catalog, mirror, running_api

from entitled.settings import Settings


@pytest.fixture
def settings(migrated_url: str) -> Settings:
    """Only a fresh migrated database: the read API needs no Kafka topic."""
    return Settings(database_url=migrated_url, kafka_bootstrap_servers="unused:0")


@pytest.fixture
def api(settings: Settings) -> Iterator[httpx.Client]:
    """A client of the API on a migrated database holding the demo catalogue."""
    assert settings.database_url
    load_catalog(settings.database_url)
    # State-changing requests must be declared JSON (tests/api/test_api_guards.py): this
    # client declares it on every request, bodiless DELETEs included.
    json = {"Content-Type": "application/json"}
    with (
        running_api(settings) as url,
        httpx.Client(base_url=url, timeout=10, headers=json) as client,
    ):
        yield client


def _search(api: httpx.Client, **params: object) -> dict[str, object]:
    response = api.get("/v1/search", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _by_id(body: dict[str, object]) -> dict[str, dict[str, object]]:
    return {hit["movie_id"]: hit for hit in body["results"]}  # type: ignore[attr-defined]


def test_each_reason(api: httpx.Client, settings: Settings) -> None:
    assert settings.database_url
    # "Star Wars" (29) is in scifi+action, "Witness" (25) in drama, "Indiana Jones and the
    # Last Crusade" (40) in no group; the customer subscribes to action and bought 40.
    entitle(settings.database_url, "cus_a", groups=["action"], movie_ids=["40"])
    body = _search(api, customer="cus_a", q="harrison ford", limit=50)
    hits = _by_id(body)
    assert body["customer"] == "cus_a" and body["query"] == "harrison ford"
    assert hits["29"]["reason"] == "subscription" and hits["29"]["available"] is True
    assert hits["40"]["reason"] == "purchase" and hits["40"]["available"] is True
    assert hits["25"]["reason"] is None and hits["25"]["available"] is False
    assert set(hits) == {"1", "4", "5", "25", "28", "29", "34", "40"}


def test_subscription_wins_over_purchase(api: httpx.Client, settings: Settings) -> None:
    assert settings.database_url
    entitle(settings.database_url, "cus_b", groups=["drama"], movie_ids=["25"])
    hits = _by_id(_search(api, customer="cus_b", q="witness"))
    assert hits["25"]["reason"] == "subscription"


def test_ranking_title_before_keywords(api: httpx.Client) -> None:
    # "matrix" is in one title; "keanu" only in keywords of two movies: title weight A ranks
    # first, then ties go by title.
    results = _search(api, customer="cus_x", q="keanu matrix OR keanu")["results"]
    titles = [hit["title"] for hit in results]  # type: ignore[attr-defined]
    assert titles == ["The Matrix", "John Wick"]


def test_empty_query_lists_catalogue_by_title(api: httpx.Client) -> None:
    results = _search(api, customer="cus_x", q="", limit=5)["results"]
    titles = [hit["title"] for hit in results]  # type: ignore[attr-defined]
    assert len(titles) == 5 and titles == sorted(titles)


def test_unknown_customer_sees_nothing_available(api: httpx.Client) -> None:
    results = _search(api, customer="cus_nobody", q="", limit=100)["results"]
    assert len(results) == 44  # type: ignore[arg-type]
    assert not any(hit["available"] for hit in results)  # type: ignore[attr-defined]


def test_catalogue_changes_show_at_once(api: httpx.Client, settings: Settings) -> None:
    assert settings.database_url
    entitle(settings.database_url, "cus_c", groups=["comedy"])
    created = api.put(
        "/v1/movies/m-new", json={"title": "Hot Fuzz", "keywords": "simon pegg police village"}
    )
    assert created.status_code == 201, created.text
    assert _by_id(_search(api, customer="cus_c", q="pegg"))["m-new"]["available"] is False

    grouped = api.put("/v1/movies/m-new/groups/comedy")
    assert grouped.status_code == 200 and grouped.json()["groups"] == ["comedy"]
    assert _by_id(_search(api, customer="cus_c", q="pegg"))["m-new"]["reason"] == "subscription"
    assert api.put("/v1/movies/m-new/groups/comedy").json()["groups"] == ["comedy"]  # idempotent

    ungrouped = api.delete("/v1/movies/m-new/groups/comedy")
    assert ungrouped.status_code == 200 and ungrouped.json()["groups"] == []
    assert _by_id(_search(api, customer="cus_c", q="pegg"))["m-new"]["available"] is False

    replaced = api.put(
        "/v1/movies/m-new", json={"title": "Hot Fuzz", "keywords": "edgar wright", "groups": []}
    )
    assert replaced.status_code == 200
    assert _search(api, customer="cus_c", q="pegg")["results"] == []

    assert api.delete("/v1/movies/m-new").status_code == 204
    assert _search(api, customer="cus_c", q="edgar")["results"] == []
    assert api.delete("/v1/movies/m-new").status_code == 404


def test_entitlements_and_customers(api: httpx.Client, settings: Settings) -> None:
    url = settings.database_url
    assert url
    mirror(url, "customers", {"id": "cus_e", "name": "Jenny Rosen", "email": "jenny@example.com"})
    mirror(
        url,
        "products",
        {"id": "prod_act", "name": "Action", "metadata": {"subscription_group": "action"}},
    )
    mirror(
        url, "products", {"id": "prod_40", "name": "Last Crusade", "metadata": {"movie_id": "40"}}
    )
    mirror(
        url,
        "subscriptions",
        {
            "id": "sub_1",
            "customer": "cus_e",
            "status": "active",
            "cancel_at_period_end": True,
            "items": [
                {
                    "id": "si_1",
                    "price": "price_1",
                    "product": "prod_act",
                    "current_period_start": 1_700_000_000,
                    "current_period_end": 1_702_592_000,
                }
            ],
        },
        refs=["prod_act"],
    )
    mirror(
        url,
        "purchases",
        {
            "id": "cs_1",
            "customer": "cus_e",
            "kind": "checkout_session",
            "paid": True,
            "amount": 399,
            "metadata": {},
            "product_ids": ["prod_40"],
            "payment_intent": "pi_1",
        },
        refs=["prod_40"],
    )
    entitle(url, "cus_e", groups=["action"], movie_ids=["40"], as_of_event="evt_last")

    body = api.get("/v1/customers/cus_e/entitlements").json()
    assert body["customer"] == "cus_e" and body["name"] == "Jenny Rosen"
    assert body["groups"] == ["action"] and body["movie_ids"] == ["40"]
    assert body["as_of"] == {"event_id": "evt_last", "created": 1_700_000_000}
    [sub] = body["subscriptions"]
    assert sub["status"] == "active" and sub["cancel_at_period_end"] is True
    assert sub["current_period_end"] == 1_702_592_000
    assert sub["products"] == [
        {"id": "prod_act", "name": "Action", "groups": ["action"], "movie_ids": []}
    ]
    [buy] = body["purchases"]
    assert buy["kind"] == "checkout_session" and buy["paid"] is True
    assert buy["movie_ids"] == ["40"]

    missing = api.get("/v1/customers/cus_unknown/entitlements")
    assert missing.status_code == 404 and "cus_unknown" in missing.json()["error"]

    entitle(url, "cus_only_row", groups=[])
    customers = api.get("/v1/customers").json()["customers"]
    assert customers == [
        {"id": "cus_e", "name": "Jenny Rosen", "email": "jenny@example.com"},
        {"id": "cus_only_row", "name": None, "email": None},
    ]
    assert len(api.get("/v1/customers", params={"limit": 1}).json()["customers"]) == 1


CLIENT_ERRORS: list[tuple[str, str, dict[str, object], int]] = [
    ("GET", "/v1/search", {}, 400),  # customer missing
    ("GET", "/v1/search?customer=", {}, 400),
    ("GET", "/v1/search?customer=" + "c" * 256, {}, 400),
    ("GET", "/v1/search?customer=cus%00x", {}, 400),
    ("GET", "/v1/search?customer=c&limit=0", {}, 400),
    ("GET", "/v1/search?customer=c&limit=101", {}, 400),
    ("GET", "/v1/search?customer=c&limit=ten", {}, 400),
    ("GET", "/v1/search?customer=c&q=" + "q" * 201, {}, 400),
    ("GET", "/v1/customers?limit=0", {}, 400),
    ("GET", "/v1/customers/cus_none/entitlements", {}, 404),
    ("PUT", "/v1/movies/x", {"content": b"{not json"}, 400),
    ("PUT", "/v1/movies/x", {"json": ["a list"]}, 400),
    ("PUT", "/v1/movies/x", {"json": {"keywords": "no title"}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": ""}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": 5}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t" * 501}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t", "groups": "action"}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t", "groups": [1]}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t", "groups": ["a,b"]}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t", "rating": 5}}, 400),
    ("PUT", "/v1/movies/x", {"json": {"title": "t\u0000"}}, 400),
    ("PUT", "/v1/movies/x", {"content": b'{"title": "\\ud800"}'}, 400),
    ("PUT", "/v1/movies/x", {"content": b"{" + b" " * 70_000 + b"}"}, 400),
    ("PUT", "/v1/movies/" + "m" * 129, {"json": {"title": "t"}}, 400),
    ("PUT", "/v1/movies/nope/groups/action", {}, 404),
    ("DELETE", "/v1/movies/nope/groups/action", {}, 404),
    ("DELETE", "/v1/movies/nope", {}, 404),
    ("GET", "/v1/search?customer=c&min_event=cs_123", {}, 400),  # not an event id
    ("GET", "/v1/search?customer=c&min_event=evt_", {}, 400),
    ("GET", "/v1/search?customer=c&min_event=evt_" + "e" * 252, {}, 400),
    ("GET", "/v1/search?customer=c&min_event=evt_%00", {}, 400),
    ("GET", "/v1/search?customer=c&min_event=evt_1&wait=11", {}, 400),
    ("GET", "/v1/search?customer=c&wait=-1", {}, 400),
    ("GET", "/v1/search?customer=c&wait=nan", {}, 400),
    ("GET", "/v1/customers/c/entitlements?min_event=evt_1&wait=inf", {}, 400),
    ("GET", "/v1/customers/c/entitlements?min_event=nope", {}, 400),
    ("GET", "/v1/changes?after=-1", {}, 400),
    ("GET", "/v1/changes?after=1.5", {}, 400),
    ("GET", "/v1/changes?after=abc", {}, 400),
    ("GET", "/v1/changes?after=%D9%A3", {}, 400),  # a non-ASCII digit
    ("GET", "/v1/changes?after=9223372036854775808", {}, 400),  # past bigint
    ("GET", "/v1/changes?after=" + "9" * 400, {}, 400),
    ("GET", "/v1/changes?limit=0", {}, 400),
    ("GET", "/v1/changes?limit=1001", {}, 400),
    ("GET", "/v1/changes?wait=61", {}, 400),
    ("GET", "/v1/changes?wait=1e400", {}, 400),
    ("GET", "/v1/changes?wait=", {}, 400),
    ("GET", "/v1/changes?customer=", {}, 400),
    ("GET", "/v1/changes?customer=" + "c" * 256, {}, 400),
    ("GET", "/v1/changes/stream?after=x", {}, 400),
    ("GET", "/v1/changes/stream?customer=a%00b", {}, 400),
    ("GET", "/v1/changes/stream", {"headers": {"Last-Event-ID": "-5"}}, 400),
    ("GET", "/v1/changes/stream", {"headers": {"Last-Event-ID": "1 2"}}, 400),
    ("POST", "/v1/changes", {}, 405),
    ("GET", "/v1/movies/1", {}, 405),
    ("GET", "/v1/nothing-here", {}, 404),
]


def test_client_errors(api: httpx.Client) -> None:
    # One server for all cases: each is a single request, a fixture per case would dominate.
    for method, path, kwargs, status in CLIENT_ERRORS:
        response = api.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (method, path[:60], response.text)
        assert isinstance(response.json()["error"], str), (method, path[:60])


def good_auth() -> dict[str, str]:
    return {"Authorization": "Bearer s3cret"}


def test_token_enforced_when_set(settings: Settings) -> None:
    with (
        running_api(replace(settings, api_token="s3cret")) as url,
        httpx.Client(base_url=url) as client,
    ):
        params = {"customer": "cus_1"}
        assert client.get("/v1/search", params=params).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/v1/search", params=params, headers=wrong).status_code == 401
        basic = {"Authorization": "Basic s3cret"}
        assert client.get("/v1/customers", headers=basic).status_code == 401
        assert client.put("/v1/movies/1", json={"title": "x"}).status_code == 401
        # one token: the admin routes take it (tests/api/test_api_guards.py: two tokens)
        assert client.get("/v1/customers", headers=good_auth()).status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/search", params=params, headers=good).status_code == 200
        for open_path in ("/", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path


def test_health_ready_metrics_page(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    _search(api, customer="cus_m", q="alien")
    text = api.get("/metrics").text
    assert 'entitled_api_request_seconds_count{method="GET",route="/v1/search",status="200"}' in (
        text
    )
    assert 'entitled_api_pool{stat="pool_max"} 10.0' in text
    page = api.get("/")
    assert page.status_code == 200 and "WebFlicks" in page.text
    assert api.get("/static/app.js").status_code == 200


def test_readyz_unmigrated_is_503(database_url: str) -> None:
    settings = Settings(database_url=database_url, kafka_bootstrap_servers="unused:0")
    with running_api(settings) as url:
        response = httpx.get(url + "/readyz")
        assert response.status_code == 503 and "migrate" in response.json()["error"]
        search = httpx.get(url + "/v1/search", params={"customer": "c"})
        assert search.status_code == 503


async def test_pool_checks_only_idle_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from api import pool as api_pool

    pinged: list[object] = []

    async def ping(conn: object) -> None:
        pinged.append(conn)

    monkeypatch.setattr(api_pool.AsyncConnectionPool, "check_connection", ping)
    idle = api_pool.IdleCheck()
    conn = type("FakeConnection", (), {})()
    await idle.check(conn)  # never returned: checked
    await idle.reset(conn)
    await idle.check(conn)  # just returned: not checked
    assert pinged == [conn]
    idle.returned[conn] -= api_pool.CHECK_IDLE_S + 1
    await idle.check(conn)  # idle too long: checked again
    assert pinged == [conn, conn]
