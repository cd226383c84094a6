"""A Stripe API stand-in on real HTTP whose objects a test sets (and changes) itself, and
which can answer slowly: what stripe-mock and localstripe cannot do. Serves GET by path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeStripe", "fake_stripe"]


@dataclass
class FakeStripe:
    url: str
    objects: dict[str, Any]  # path -> JSON answer; the test may change it between reads
    seconds: list[int] = field(default_factory=list)  # the second each request arrived


@asynccontextmanager
async def fake_stripe(
    objects: dict[str, Any],
    *,
    next_second: bool = False,
    on_request: Callable[[int], Awaitable[None]] | None = None,
) -> AsyncIterator[FakeStripe]:
    """Serve `objects` on 127.0.0.1. `next_second`: each answer leaves after the next second
    boundary (a read whose answer arrives in a later second than it was sent). `on_request`
    runs with the arrival second before the answer is sent."""
    fake = FakeStripe("", objects)

    async def handle(request: web.Request) -> web.Response:
        now = time.time()
        fake.seconds.append(int(now))
        if on_request is not None:
            await on_request(int(now))
        if next_second:
            await asyncio.sleep(max(0.0, int(now) + 1.1 - time.time()))
        return web.json_response(fake.objects[request.path])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
