"""A real HTTP proxy in front of a Stripe stand-in that records each request's time and can
answer some of them 429 or 500 itself (what stripe-mock and localstripe never do)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from aiohttp import web


@dataclass
class ProxyLog:
    """Times (monotonic) and paths of requests, and the faults the proxy answered itself."""

    times: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    answered: dict[int, int] = field(default_factory=dict)  # status -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most requests seen in any window of `window_s` seconds."""
        with self.lock:
            times = sorted(self.times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best


@contextmanager
def stripe_proxy(
    target: str, *, fault_every: int = 0, retry_after: str = "1"
) -> Iterator[tuple[str, ProxyLog]]:
    """Serve on 127.0.0.1; yield (base URL, log). With `fault_every` n > 0, the n-th, 2n-th,
    ... requests are answered 429 (odd multiples) or 500 (even ones) with `Retry-After`."""
    log = ProxyLog()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def handle(request: web.Request) -> web.Response:
        with log.lock:
            log.times.append(time.monotonic())
            log.paths.append(request.path)
            n = len(log.times)
        if fault_every and n % fault_every == 0:
            status = 429 if (n // fault_every) % 2 else 500
            with log.lock:
                log.answered[status] = log.answered.get(status, 0) + 1
            kind = "rate_limit_error" if status == 429 else "api_error"
            return web.json_response(
                {"error": {"type": kind, "message": "injected"}},
                status=status,
                headers={"Retry-After": retry_after},
            )
        client = state["client"]
        assert isinstance(client, httpx.AsyncClient)
        upstream = await client.get(
            f"{target}{request.path_qs}",
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "stripe-version", "request-id")
        }
        return web.Response(body=upstream.content, status=upstream.status_code, headers=headers)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        state["client"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        state["port"] = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state["loop"] = loop
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        client = state["client"]
        assert isinstance(client, httpx.AsyncClient)
        loop.run_until_complete(client.aclose())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the proxy did not start")
    try:
        yield f"http://127.0.0.1:{state['port']}", log
    finally:
        loop = state["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
