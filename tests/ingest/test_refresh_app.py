"""`POST /v1/refresh` mounted in a Starlette app: real uvicorn, Kafka and stripe-mock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import orjson
from starlette.applications import Starlette

from entitled.settings import Settings
from ingest.refresh.app import RefreshEndpoint
from tests.support.kafka import read_topic
from tests.support.serve import serve
from tests.support.stripe_mock import API_KEY


def _host(endpoint: RefreshEndpoint) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await endpoint.close()

    return Starlette(routes=[endpoint.route()], lifespan=lifespan)


async def test_refresh_logs_snapshots_and_answers_their_ids(
    settings: Settings, stripe_mock: str
) -> None:
    s = replace(settings, stripe_api_key=API_KEY, stripe_api_base=stripe_mock, api_token="tok")
    async with serve(_host(RefreshEndpoint(s))) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"ids": ["sub_r1", "in_r1", "cs_test_open", "bogus"]}
        denied = await client.post("/v1/refresh", json=body)
        assert denied.status_code == 401
        assert (
            await client.post("/v1/refresh", json={"ids": []}, headers=_auth())
        ).status_code == 400
        r = await client.post("/v1/refresh", json=body, headers=_auth())
        assert r.status_code == 200, r.text
        events = {e["id"]: e for e in r.json()["events"]}
    assert events["bogus"] == {"id": "bogus", "event_id": None, "outcome": "unknown_id"}
    assert events["cs_test_open"]["outcome"] == "no_state"  # stripe-mock's sessions are open
    records = await read_topic(s)
    logged = {orjson.loads(r.value)["id"]: dict(r.headers) for r in records}
    assert set(logged) == {events["sub_r1"]["event_id"], events["in_r1"]["event_id"]}
    assert all(h["source"] == b"refresh" for h in logged.values())


async def test_refresh_without_a_key_is_503(settings: Settings) -> None:
    async with serve(_host(RefreshEndpoint(settings))) as url, httpx.AsyncClient() as client:
        r = await client.post(f"{url}/v1/refresh", json={"ids": ["sub_1"]})
    assert r.status_code == 503 and "STRIPE_API_KEY" in r.json()["error"]
    assert await read_topic(settings) == []


def _auth() -> dict[str, str]:
    return {"Authorization": "Bearer tok"}
