"""The worker's own small HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.

Served by uvicorn inside the worker's event loop (a Faust task), on `ENTITLED_METRICS_HOST`
(default 127.0.0.1; 0.0.0.0 in containers, for a Prometheus elsewhere) and the port of
`ENTITLED_WORKER_METRICS_PORT` / `entitled worker --metrics-port` (`entitled relay
--metrics-port` for the relay).
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

from .metrics import CONTENT_TYPE

__all__ = ["Observed", "create_app", "serve"]


class Observed(Protocol):
    """A process part that reports metrics and whether it is doing its job."""

    stalled: str | None

    def ready(self) -> bool: ...

    def render_metrics(self) -> bytes: ...


def create_app(runner: Observed) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(runner.render_metrics(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        if runner.ready():
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": runner.stalled}, status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )


async def serve(runner: Observed, port: int, host: str = "127.0.0.1") -> None:
    """Serve on `host:port` until cancelled (the worker stopping)."""
    config = uvicorn.Config(
        create_app(runner), host=host, port=port, lifespan="off", log_level="warning"
    )
    await _Server(config).serve()


class _Server(uvicorn.Server):
    """The worker owns the process's signals: this server must not capture them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
