"""The read API's database: which URL it reads from, its one pool, and the pool's check.

`read_url` is the one place that decides where reads go; the pool and the change watcher
(`projections.watcher`) both take it from here, so pointing reads at a replica is one edit.
Reads never write: the read path works against a hot standby.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from psycopg_pool import AsyncConnectionPool

from entitled.settings import Settings

__all__ = ["CHECK_IDLE_S", "IdleCheck", "create_pool", "read_url"]

CHECK_IDLE_S = 1.0


def read_url(settings: Settings) -> str:
    """The database URL the read API reads from."""
    if not settings.database_url:
        raise ValueError("settings.database_url is required by the read API")
    return settings.database_url


class IdleCheck:
    """The pool's `check`, only for connections idle longer than `CHECK_IDLE_S`.

    `AsyncConnectionPool.check_connection` on every `getconn` costs a round trip per search:
    a third of the work of a hot request. A connection handed back less than a second ago
    is almost surely fine; one idle longer (Postgres may have restarted meanwhile) is
    checked as before, and a broken one is replaced before any request sees it.
    """

    def __init__(self) -> None:
        self.returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: Any) -> None:
        returned = self.returned.get(conn)
        if returned is None or time.monotonic() - returned > CHECK_IDLE_S:
            await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: Any) -> None:
        self.returned[conn] = time.monotonic()


def create_pool(url: str) -> AsyncConnectionPool[Any]:
    """The API's pool (not opened: the app's lifespan opens and closes it)."""
    idle = IdleCheck()
    return AsyncConnectionPool(
        url,
        min_size=2,
        max_size=10,
        open=False,
        check=idle.check,
        reset=idle.reset,
        kwargs={"autocommit": True},  # every statement stands alone: no BEGIN/COMMIT trips
        name="entitled-api",
    )
