"""Liveness, readiness and metrics of the processes that serve no HTTP of their own (worker,
relay, hydrator): `/livez`, `/readyz`, `/metrics` (and `/healthz`, the old name of `/livez`).

Semantics, the same on every process (ingest and the read API too, see `entitled.serving`):
- `/livez` 200 while the process's event loop answers. It never depends on Kafka or
  Postgres: an outage of theirs must not get every copy restarted. Restart on failure.
- `/readyz` 200 while the process is doing its job; 503 with a reason when it is not (folding
  stalled, a dependency away) and from the first moment of a drain (SIGTERM). Take the copy
  out of rotation on failure; never restart it for that.

Served by uvicorn inside the process's own event loop (a task), on `ENTITLED_METRICS_HOST`
(default 127.0.0.1; 0.0.0.0 in containers) and the port of `--metrics-port`
(`ENTITLED_WORKER_METRICS_PORT` for the worker).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["CONTENT_TYPE", "Observed", "create_app", "serve"]

# the text format every Prometheus scrapes (0.0.4), as the processes have always served it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Observed(Protocol):
    """A process part that reports metrics and whether it is doing its job."""

    stalled: str | None

    def ready(self) -> bool: ...

    def render_metrics(self) -> bytes: ...


def create_app(observed: Observed) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(observed.render_metrics(), media_type=CONTENT_TYPE)

    async def livez(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def readyz(request: Request) -> Response:
        if observed.ready():
            return JSONResponse({"ready": True})
        reason = observed.stalled or "draining"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/livez", livez),
            Route("/healthz", livez),
            Route("/readyz", readyz),
        ]
    )


async def serve(observed: Observed, port: int, host: str = "127.0.0.1") -> None:
    """Serve on `host:port` until cancelled (the process stopping)."""
    config = uvicorn.Config(
        create_app(observed), host=host, port=port, lifespan="off", log_level="warning"
    )
    await _Server(config).serve()


class _Server(uvicorn.Server):
    """The process owns its signals (Faust's worker, the relay's drain): not this server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
