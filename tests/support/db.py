"""The test database: migrate it and load a catalogue in-process; read it: one `query`, the
live entitlements and checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

from entitled.settings import Settings
from entitled.topics import end_offsets
from launcher.services._process import run_async
from projections import catalog, schema


def migrate(database_url: str) -> None:
    """`entitled migrate`, in-process."""

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await schema.migrate(conn)  # type: ignore[arg-type]
            await conn.commit()

    run_async(go)


def demo_catalog_path() -> Path:
    return Path(str(resources.files("projections").joinpath("demo_catalog.jsonl")))


def load_catalog(database_url: str, movies: Sequence[catalog.Movie] | None = None) -> None:
    """`entitled catalog load` (the demo catalogue unless `movies`), in-process."""
    rows = list(movies) if movies is not None else list(catalog.read_file(demo_catalog_path()))

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url)
        async with conn, conn.transaction():
            await catalog.load_movies(conn, rows)

    run_async(go)


def query(settings: Settings, q: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement on the test's database (autocommit, `%s` placeholders)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(q, args or None).fetchall()


def entitlements(settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """customer -> (groups, movie ids) of the live version ({} before the schema exists)."""
    try:
        rows = query(settings, "SELECT customer, groups, movie_ids FROM live.customer_entitlements")
    except psycopg.errors.UndefinedTable:
        return {}
    return {c: (g, m) for c, g, m in rows}


def active_schema(settings: Settings) -> str:
    """The schema (`entitled_vN`) of the active projection version."""
    rows = query(
        settings,
        "SELECT v.schema_name FROM entitled.active a JOIN entitled.versions v USING (version)",
    )
    return str(rows[0][0])


def processed_count(settings: Settings) -> int:
    """Events applied to the active version so far (0 while Postgres is unreachable)."""
    try:
        schema = active_schema(settings)
        return int(query(settings, f"SELECT count(*) FROM {schema}.processed_events")[0][0])
    except (psycopg.Error, IndexError):
        return 0


def progress(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """(log end, live checkpoint) per partition of the test's topic."""
    ends = run_async(lambda: end_offsets(settings))
    cps = dict(
        query(
            settings,
            "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
            settings.topic,
        )
    )
    return ends, cps


def caught_up(settings: Settings) -> bool:
    """Every partition's live checkpoint has reached the log end (False before the schema
    exists and while a service is down)."""
    try:
        ends, cps = progress(settings)
    except Exception:  # either service briefly unreachable, or no schema yet: not caught up
        return False
    return all(cps.get(p, 0) >= e for p, e in ends.items())
