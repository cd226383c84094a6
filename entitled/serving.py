"""Run an HTTP service (ingest, the read API) under uvicorn with a drain on SIGTERM.

A copy being stopped (a deploy, a scale-in) must not fail a request:
1. at SIGTERM `/readyz` answers 503 `{"status": "draining"}` at once, while every request is
   still served for `drain_delay_s` (the time a load balancer takes to notice);
2. then uvicorn stops accepting connections and gives the requests in flight up to
   `drain_timeout_s` to finish (a webhook waiting for Kafka's ack, a long-poll);
3. the process exits 0. A second SIGTERM or SIGINT skips the delay.

`/livez` answers 200 whenever the event loop runs, whatever Kafka or Postgres do (see
`entitled.health` for the semantics every process shares).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from entitled.settings import Settings

__all__ = ["Probes", "server"]


class Probes:
    """ASGI wrapper: `/livez`, and `/readyz` answered 503 while draining (else the app's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/livez":
            await _answer(send, 200, {"live": True})
        elif scope["type"] == "http" and scope["path"] == "/readyz" and self.draining:
            await _answer(send, 503, {"status": "draining"})
        else:
            await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


class _DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, probes: Probes, delay_s: float, on_exit: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self.probes = probes
        self.delay_s = delay_s
        self.on_exit = on_exit
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal after the shutdown, so the process would
        # end "killed by SIGTERM" instead of exiting 0 after a clean drain.
        if self._exit_at is None:
            self.probes.draining = True
            self._exit_at = time.monotonic() + self.delay_s
        else:
            self._exit_at = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at and not self.should_exit:
            self.on_exit()
            self.should_exit = True
        return await super().on_tick(counter)


def server(
    app: ASGIApp,
    settings: Settings,
    *,
    host: str,
    port: int,
    log_level: str,
    on_exit: Callable[[], None] = lambda: None,
) -> uvicorn.Server:
    """A server of `app` whose `run()` serves until SIGTERM/SIGINT and a drain (module
    doc); `on_exit` runs when uvicorn stops accepting (end what would never finish by
    itself: event streams). uvicorn's logging is configured once this returns."""
    probes = Probes(app)
    config = uvicorn.Config(
        probes,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        timeout_keep_alive=max(1, round(settings.keep_alive_s)),
    )
    return _DrainingServer(config, probes, settings.drain_delay_s, on_exit)
