"""Commands of the projections stage: `entitled migrate`, `entitled catalog`."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

import click

from entitled.settings import Settings

log = logging.getLogger(__name__)


def database_settings(settings: Settings) -> Settings:
    """`settings`, which must name a database (the `entitled` command fills DATABASE_URL
    with the local Postgres service when nothing else is configured)."""
    if not settings.database_url:
        raise click.UsageError("no database: set DATABASE_URL")
    return settings


async def _migrate(url: str, attempts: int = 8) -> str:
    """Migrate in one transaction; again, after a pause, when Postgres chose it as the victim
    of a deadlock with the live worker (a release's migration runs while the old workers
    fold: its DDL locks the tables one by one, a batch takes them in its own order; seen in
    the rolling upgrade test). Nothing of an aborted attempt stays; the migration is
    idempotent."""
    import psycopg

    from projections import schema

    for attempt in range(1, attempts + 1):
        try:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                active = await schema.migrate(conn)
                await conn.commit()
            return active
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == attempts:
                raise
            log.warning("migration: %s; again (attempt %d of %d)", exc, attempt + 1, attempts)
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


@click.command()
def migrate() -> None:
    """Create or update the Postgres schema (idempotent); print the active version."""
    import psycopg

    settings = database_settings(Settings.from_env())
    assert settings.database_url is not None
    for module in settings.rule_plugins:  # a release's plugin may add columns (schema)
        importlib.import_module(module)
    try:
        active = asyncio.run(_migrate(settings.database_url))
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
    click.echo(f"migrated: active projection schema {active}")


@click.group()
def catalog() -> None:
    """The movie catalogue (entitled.movies)."""


async def _load(url: str, path: Path) -> tuple[int, int]:
    import psycopg

    from projections import catalog as movies

    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        result = await movies.load_movies(conn, movies.read_file(path))
    return result.inserted, result.updated


@catalog.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load(file: Path) -> None:
    """Upsert movies from FILE in one transaction.

    FILE is CSV with header movie_id,title,keywords,groups (groups `;`-separated) or JSON
    lines (.jsonl) of {"movie_id", "title", "keywords", "groups": [...]}.
    """
    import psycopg

    from projections.catalog import InvalidMovie

    settings = database_settings(Settings.from_env())
    assert settings.database_url is not None
    try:
        inserted, updated = asyncio.run(_load(settings.database_url, file))
    except InvalidMovie as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise click.ClickException("schema not migrated: run `entitled migrate`") from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
    click.echo(f"loaded {file}: {inserted} inserted, {updated} updated")
