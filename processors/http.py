"""The worker's own small HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.

Served by uvicorn inside the worker's event loop (a Faust task), on 127.0.0.1 and the port of
`ENTITLED_WORKER_METRICS_PORT` / `entitled worker --metrics-port`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .metrics import CONTENT_TYPE
from .runner import BatchRunner

__all__ = ["create_app", "serve"]


def create_app(runner: BatchRunner) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(runner.metrics.render(), media_type=CONTENT_TYPE)

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


async def serve(runner: BatchRunner, port: int) -> None:
    """Serve until cancelled (the worker stopping)."""
    config = uvicorn.Config(
        create_app(runner), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    await _Server(config).serve()


class _Server(uvicorn.Server):
    """The worker owns the process's signals: this server must not capture them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
