"""The Postgres connection pool of a worker or replay process (one per process)."""

from __future__ import annotations

import time
import weakref
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

__all__ = ["RECHECK_S", "configure", "make_pool", "recheck"]

# A connection the pool checked (one round trip to the server) less than this long ago is
# handed out unchecked: checking every checkout cost a round trip per batch, one of the ~20
# of a batch's transaction (issue 21). A connection psycopg saw fail is closed and never
# handed out; one that broke unseen within this second fails its first statement, which
# the writer retries (a transient failure) on another.
RECHECK_S = 1.0
_checked: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


async def recheck(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's `check`: the library's, at most once per `RECHECK_S` per connection."""
    now = time.monotonic()
    last = _checked.get(conn)
    if last is not None and now - last < RECHECK_S and not conn.closed:
        return
    await AsyncConnectionPool.check_connection(conn)
    _checked[conn] = now


async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Read and write jsonb with orjson: the mirrored rows are JSON, and the stdlib's json
    was the writer's largest single cost."""
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)


def make_pool(
    database_url: str, *, max_size: int = 4, name: str = "entitled"
) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        check=recheck,
        configure=configure,
        kwargs={"autocommit": True},
        reconnect_timeout=0,  # keep trying for ever: Postgres may be down for a while
        # Give up a checkout after a few seconds: the caller's retry loop backs off and tries
        # again, instead of one request waiting 30 s while Postgres is already back.
        timeout=5.0,
        max_idle=60.0,
    )
