"""Hostile webhook requests: every one gets a 4xx, nothing reaches the log, the process
stays healthy, and no answer or log line shows the webhook secret.

Over 10,000 generated requests (`make test-long`; a tenth in `make test`) go to the real
ingest app in-process (httpx.ASGITransport, a real Kafka producer behind it); a smaller
sample and some raw-socket abuse go over real HTTP to an `entitled ingest` process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from entitled.settings import Settings
from entitled.topics import end_offsets
from ingest.app import create_app
from launcher.services._process import run_async
from launcher.stripe import events as se
from tests.hostile.hostile_requests import MAX_BODY, SECRET, Hostile, hostile
from tests.support.examples import examples
from tests.support.processes import Procs
from tests.support.system import start_system

T = TypeVar("T")
PER_EXAMPLE = 10
EXAMPLES = examples(1050)  # x PER_EXAMPLE: over 10,000 requests in the long run
LEAST = examples(1000) * PER_EXAMPLE  # what the run must at least have sent


class LoopThread:
    """An event loop in a thread, so synchronous hypothesis tests can drive an async app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, factory: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        async def run() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class InProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = LoopThread()
        self.app = create_app(settings)
        self.loop.call(self.app.state.producer.start)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://ingest", timeout=30
        )

    async def send(self, req: Hostile) -> httpx.Response:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers]
        content: Any = req.body
        if req.chunked:
            body = req.body

            async def chunks() -> Any:
                for i in range(0, len(body), 16 * 1024):
                    yield body[i : i + 16 * 1024]

            content = chunks()
        return await self.client.request(req.method, req.path, content=content, headers=headers)

    def close(self) -> None:
        self.loop.call(self.client.aclose)
        self.loop.call(self.app.state.producer.stop)
        self.loop.close()


def _ends(settings: Settings) -> dict[int, int]:
    return run_async(lambda: end_offsets(settings))


@pytest.fixture
def small_settings(settings: Settings) -> Settings:
    return replace(settings, max_body_bytes=MAX_BODY)


@pytest.fixture
def in_process(small_settings: Settings) -> Iterator[InProcess]:
    from entitled.topics import ensure_event_topic

    run_async(lambda: ensure_event_topic(small_settings))
    ip = InProcess(small_settings)
    yield ip
    ip.close()


def _check(req: Hostile, r: httpx.Response) -> None:
    assert r.status_code in req.expect, (req.kind, req.headers[:3], req.body[:200], r.text[:300])
    assert SECRET not in r.text
    if r.status_code in (400, 413):
        assert r.json()["error"]


def test_thousands_of_hostile_requests_in_process(
    in_process: InProcess, small_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Our own loggers at every level; the client libraries' debug dumps only cost time.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="ingest")
    before = _ends(small_settings)
    kinds: Counter[str] = Counter()

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(hostile, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def run(requests: list[Hostile]) -> None:
        async def go() -> list[httpx.Response]:
            return await asyncio.gather(*(in_process.send(r) for r in requests))

        for req, response in zip(requests, in_process.loop.call(go), strict=True):
            kinds[req.kind.split("/")[0]] += 1
            _check(req, response)

    run()
    total = sum(kinds.values())
    print(f"hostile requests: {total} {dict(kinds)}")
    assert total >= LEAST
    assert len(kinds) >= 8, kinds  # every family was drawn
    # nothing reached the log
    assert _ends(small_settings) == before
    # the app is healthy and still writes a real event
    assert in_process.loop.call(lambda: in_process.client.get("/healthz")).status_code == 200
    event = se.event("customer.created", se.customer("cus_after_hostile"))
    body = se.encode(event)
    ok = in_process.loop.call(
        lambda: in_process.client.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": se.sign_header(body, SECRET)},
        )
    )
    assert ok.status_code == 200, ok.text
    assert sum(_ends(small_settings).values()) == sum(before.values()) + 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged


def _raw(port: int, payload: bytes, *, close_early: bool = False) -> bytes:
    """Send raw bytes on a fresh connection; return what the server answered (maybe b'')."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if close_early:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


RAW_ABUSE = [
    b"GARBAGE\r\n\r\n",
    b'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"id"',
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7"
    b"\r\n\r\n{}{}{}{",
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n",
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
    b"POST /webhooks/stripe HTTP/9.9\r\n\r\n",
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
]


def test_hostile_sample_over_real_http(settings: Settings, procs: Procs, tmp_path: Path) -> None:
    system = start_system(procs, workers=0, api=False, ENTITLED_MAX_BODY_BYTES=str(MAX_BODY))
    url = system.ingest_urls[0]
    port = int(url.rsplit(":", 1)[1])
    before = _ends(settings)
    seen: Counter[int] = Counter()

    with httpx.Client(base_url=url, timeout=30) as client:

        @hsettings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(hostile, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
        def run(requests: list[Hostile]) -> None:
            for req in requests:
                if req.kind == "content_length":
                    continue  # h11 refuses to send these; the raw socket part covers them
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers]
                content: Any = req.body
                if req.chunked:
                    content = iter([req.body[i : i + 8192] for i in range(0, len(req.body), 8192)])
                try:
                    r = client.request(req.method, req.path, content=content, headers=headers)
                except httpx.RemoteProtocolError:
                    # the server may close early on a body over the limit: also a refusal
                    assert req.kind == "oversized"
                    continue
                seen[r.status_code] += 1
                _check(req, r)

        run()
        for payload in RAW_ABUSE:
            answer = _raw(port, payload)
            if answer:
                status = int(answer.split(b" ", 2)[1])
                assert 400 <= status < 500, answer[:200]
        for payload in RAW_ABUSE[:3]:
            _raw(port, payload, close_early=True)
        assert client.get("/healthz").status_code == 200
    assert sum(seen.values()) >= 250, seen
    assert system.ingests[0].alive
    assert _ends(settings) == before
    log = system.ingests[0].log.read_text(errors="replace")
    assert SECRET not in log
