"""The event loop of the long-running processes that are not served by uvicorn.

uvicorn runs ingest and the read API on uvloop (a dependency: pyproject.toml); the worker,
the relay and the hydrator ran on asyncio's own loop, written in Python: its `_run_once`,
socket writes and cross-thread wake-ups (the Faust consumer thread hands every fetch to the
worker's loop) were ~10-25 % of a live worker's samples at 200 webhooks/s (py-spy, issue
21). `install` before the loop is made gives them uvloop too; where uvloop is not installed
(not on Windows), asyncio's own.
"""

from __future__ import annotations

import asyncio

__all__ = ["install"]


def install() -> None:
    """Make every event loop made from now on (`asyncio.run`, `new_event_loop`, other
    threads' loops) a uvloop one, when uvloop is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on this platform: asyncio's own loop
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
