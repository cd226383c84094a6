"""Closed by default, each refusal over real HTTP (uvicorn): read and admin tokens, Host
names (DNS rebinding), non-JSON state-changing requests (cross-site forms), refresh's body
cap and concurrency limit; and `entitled api` refusing to listen beyond loopback without
tokens (a real process)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from api_support import load_catalog, migrate, running_api

from entitled.settings import Settings
from ingest.refresh.app import MAX_BODY, MAX_IN_FLIGHT, RefreshEndpoint
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import ENTITLED, Procs
from tests.support.system import ready

READ, ADMIN = "tok_read_9a1b", "tok_admin_7c2d"
JSON = {"Content-Type": "application/json"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    migrate(database_url)
    load_catalog(database_url)
    return Settings(
        database_url=database_url,
        kafka_bootstrap_servers="unused:0",
        api_token=READ,
        admin_token=ADMIN,
    )


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[httpx.Client, RefreshEndpoint]]:
    """The API as `entitled api` composes it (refresh mounted), no STRIPE_API_KEY."""
    refresh = RefreshEndpoint(settings)
    with (
        running_api(settings, extra_routes=[refresh.route()]) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client, refresh


def test_read_and_admin_tokens(served: tuple[httpx.Client, RefreshEndpoint]) -> None:
    client, _ = served
    search = {"customer": "cus_1", "q": "alien"}
    assert client.get("/v1/search", params=search).status_code == 401
    assert client.get("/v1/search", params=search, headers=_bearer("nope")).status_code == 401
    basic = {"Authorization": f"Basic {READ}"}
    assert client.get("/v1/search", params=search, headers=basic).status_code == 401
    # reads: the read token, and the admin token too
    for token in (READ, ADMIN):
        assert client.get("/v1/search", params=search, headers=_bearer(token)).status_code == 200
        r = client.get("/v1/changes", params={"wait": 0}, headers=_bearer(token))
        assert r.status_code == 200, r.text
    # what reveals every customer or changes state: the admin token only
    admin_only = [
        ("GET", "/v1/customers", {}),
        ("GET", "/v1/drift", {}),
        ("PUT", "/v1/movies/m-guard", {"json": {"title": "Guarded"}}),
        ("PUT", "/v1/movies/m-guard/groups/action", {"headers": JSON}),
        ("DELETE", "/v1/movies/m-guard/groups/action", {"headers": JSON}),
        ("DELETE", "/v1/movies/m-guard", {"headers": JSON}),
        ("POST", "/v1/refresh", {"json": {"ids": ["sub_1"]}}),
    ]
    for method, path, kwargs in admin_only:
        headers = dict(kwargs.get("headers", {}))  # type: ignore[call-overload]
        rest = {k: v for k, v in kwargs.items() if k != "headers"}
        none = client.request(method, path, headers=headers, **rest)  # type: ignore[arg-type]
        assert none.status_code == 401, (method, path, none.text)
        read = client.request(method, path, headers={**headers, **_bearer(READ)}, **rest)  # type: ignore[arg-type]
        assert read.status_code == 403, (method, path, read.text)
        assert "ENTITLED_ADMIN_TOKEN" in read.json()["error"]
        admin = client.request(method, path, headers={**headers, **_bearer(ADMIN)}, **rest)  # type: ignore[arg-type]
        # refresh passes the gate and finds no STRIPE_API_KEY: 503, not a refusal
        assert admin.status_code in (200, 201, 204, 503), (method, path, admin.text)
        assert READ not in admin.text and ADMIN not in admin.text
    # the event stream takes ?token= (an EventSource sends no headers); a wrong one is refused
    r = client.get("/v1/changes/stream", params={"token": "nope"})
    assert r.status_code == 401


def test_one_read_token_also_closes_admin_routes(settings: Settings) -> None:
    """Only ENTITLED_API_TOKEN set: the admin routes need it (never open)."""
    with (
        running_api(replace(settings, admin_token=None)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        assert client.get("/v1/customers").status_code == 401
        assert client.get("/v1/customers", headers=_bearer(READ)).status_code == 200


def test_hosts_not_allowed_are_refused(settings: Settings) -> None:
    with running_api(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        port = url.rsplit(":", 1)[1]
        search = {"customer": "cus_1", "q": "alien"}
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            r = client.get("/v1/search", params=search, headers={"Host": host, **_bearer(READ)})
            assert r.status_code == 421, (host, r.text)
            assert "ENTITLED_ALLOWED_HOSTS" in r.json()["error"]
            assert client.get("/", headers={"Host": host}).status_code == 421
            # probes and scrapers reach these by address; they hold no customer data
            assert client.get("/healthz", headers={"Host": host}).status_code == 200
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST", f"[::1]:{port}"):
            r = client.get("/v1/search", params=search, headers={"Host": host, **_bearer(READ)})
            assert r.status_code == 200, (host, r.text)
    chosen = replace(settings, allowed_hosts=("api.example.com", "*.internal.example"))
    with running_api(chosen) as url, httpx.Client(base_url=url, timeout=10) as client:
        for host, status in (
            ("api.example.com", 200),
            ("api.example.com:443", 200),
            ("a.internal.example", 200),
            ("internal.example.evil", 421),
            ("localhost", 421),
        ):
            r = client.get("/openapi.json", headers={"Host": host})
            assert r.status_code == status, host


def test_state_changing_requests_need_json(
    served: tuple[httpx.Client, RefreshEndpoint],
) -> None:
    """What a cross-site form or `text/plain` fetch sends (no preflight) is refused before
    anything runs, with or without a token."""
    client, _ = served
    body = b'{"title": "Forged"}'
    for content_type in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ):
        headers = _bearer(ADMIN) | ({"Content-Type": content_type} if content_type else {})
        for method, path in (
            ("PUT", "/v1/movies/forged"),
            ("DELETE", "/v1/movies/1"),
            ("POST", "/v1/refresh"),
        ):
            r = client.request(method, path, content=body, headers=headers)
            assert r.status_code == 415, (method, path, content_type, r.text)
            assert "application/json" in r.json()["error"]
    assert client.get("/v1/movies/forged", headers=_bearer(ADMIN)).status_code == 405
    ok = client.put(
        "/v1/movies/forged",
        content=body,
        headers=_bearer(ADMIN) | {"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert ok.status_code == 201, ok.text


def test_refresh_body_cap_and_concurrency(
    served: tuple[httpx.Client, RefreshEndpoint],
) -> None:
    client, refresh = served
    auth = _bearer(ADMIN) | JSON
    big = b'{"ids": ["' + b"x" * MAX_BODY + b'"]}'
    r = client.post("/v1/refresh", content=big, headers=auth)
    assert r.status_code == 413, r.text

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        yield b'{"ids": ["'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"]}'

    assert client.post("/v1/refresh", content=chunked(), headers=auth).status_code == 413

    # MAX_IN_FLIGHT slow callers hold every slot (their bodies never finish until released)
    release = threading.Event()
    answers: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield b'{"ids": '
        release.wait(30)
        yield b'["sub_1"]}'

    def slow_caller() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=40) as own:
            answers.append(own.post("/v1/refresh", content=slow_body(), headers=auth).status_code)

    callers = [threading.Thread(target=slow_caller) for _ in range(MAX_IN_FLIGHT)]
    for t in callers:
        t.start()
    try:
        wait_until(lambda: refresh.in_flight == MAX_IN_FLIGHT, 20, "slots taken", None)
        busy = client.post("/v1/refresh", json={"ids": ["sub_2"]}, headers=_bearer(ADMIN))
        assert busy.status_code == 429, busy.text
        assert int(busy.headers["Retry-After"]) > 0
    finally:
        release.set()
        for t in callers:
            t.join(40)
    assert answers == [503] * MAX_IN_FLIGHT  # they ran: no STRIPE_API_KEY here
    assert refresh.in_flight == 0
    # a free slot again: the gate lets the next one through
    after = client.post("/v1/refresh", json={"ids": ["sub_3"]}, headers=_bearer(ADMIN))
    assert after.status_code == 503 and "STRIPE_API_KEY" in after.json()["error"]


def _api_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLED_", "STRIPE_"))}
    env.update(DATABASE_URL=database_url, **extra)
    return env


def test_api_refuses_to_listen_beyond_loopback_without_tokens(database_url: str) -> None:
    for extra in ({}, {"ENTITLED_API_TOKEN": READ}, {"ENTITLED_ADMIN_TOKEN": ADMIN}):
        out = subprocess.run(
            [*ENTITLED, "api", "--host", "0.0.0.0", "--port", str(free_port())],
            env=_api_env(database_url, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        assert "refusing to listen on 0.0.0.0" in out.stderr
        assert "--insecure" in out.stderr
        for name in ("ENTITLED_API_TOKEN", "ENTITLED_ADMIN_TOKEN"):
            assert (name in out.stderr) == (name not in extra), (extra, out.stderr)
        assert READ not in out.stderr + out.stdout and ADMIN not in out.stderr + out.stdout


def test_insecure_serves_beyond_loopback_with_a_warning(settings: Settings, procs: Procs) -> None:
    port = free_port()
    api = procs.spawn(
        "api",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--insecure",
        ENTITLED_API_TOKEN="",
        ENTITLED_ADMIN_TOKEN="",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url), 90, "api ready", procs)
    r = httpx.get(f"{url}/v1/search", params={"customer": "c", "q": "x"}, timeout=10)
    assert r.status_code == 200  # open, as asked
    api.stop()
    log = api.log.read_text()
    assert "WARNING: --insecure: serving on 0.0.0.0 without ENTITLED_API_TOKEN and " in log
