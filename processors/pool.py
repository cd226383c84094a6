"""The Postgres connection pool of a worker or replay process (one per process)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

__all__ = ["configure", "make_pool"]


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
        check=AsyncConnectionPool.check_connection,
        configure=configure,
        kwargs={"autocommit": True},
        reconnect_timeout=0,  # keep trying for ever: Postgres may be down for a while
        # Give up a checkout after a few seconds: the caller's retry loop backs off and tries
        # again, instead of one request waiting 30 s while Postgres is already back.
        timeout=5.0,
        max_idle=60.0,
    )
