"""An app under a real uvicorn on 127.0.0.1 in the test's own loop; `running`: the ingest app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from entitled.settings import Settings
from ingest.app import create_app


@dataclass(frozen=True)
class Running:
    url: str
    app: Starlette
    settings: Settings


@contextlib.asynccontextmanager
async def serve(app: Starlette, timeout: float = 30.0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and an OS-chosen port; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + timeout
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            raise RuntimeError("uvicorn exited during startup")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """The ingest app for `settings`, served."""
    app = create_app(settings)
    async with serve(app) as url:
        yield Running(url, app, settings)
