"""The read API's databases: the primary's URL, the pools, and the pools' check.

`read_url` is the primary (the catalogue, the change feed and refresh use it);
`create_readers` adds one pool and one watcher per streaming replica of
`ENTITLED_READ_DATABASE_URL`, which `api.readers` serves the reads from.
Reads never write: the read path works against a hot standby.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.readers import Readers, Target
from api.watcher import Watcher
from entitled.settings import Settings

__all__ = ["CHECK_IDLE_S", "IdleCheck", "create_pool", "create_readers", "read_url"]

# A `min_event` read on a replica waits for its watcher's poll (NOTIFY does not reach
# standbys): a tenth of a second bounds what the poll adds to read-your-writes.
REPLICA_POLL_S = 0.1

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


def create_pool(url: str, name: str = "entitled-api") -> AsyncConnectionPool[Any]:
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
        name=name,
    )


def create_readers(
    settings: Settings, primary_pool: AsyncConnectionPool[Any], primary_watcher: Watcher
) -> Readers:
    """The targets of the reads: the primary (the app's own pool and watcher) and one pool
    and watcher per replica of `settings.read_database_urls` (opened by `Readers.open`)."""
    primary = Target("primary", read_url(settings), primary_pool, primary_watcher, primary=True)
    replicas = [
        Target(
            f"replica-{i}",
            url,
            create_pool(url, name=f"entitled-api-replica-{i}"),
            Watcher(url, standby_poll_s=REPLICA_POLL_S),
            primary=False,
        )
        for i, url in enumerate(settings.read_database_urls, 1)
    ]
    return Readers(primary, replicas)
