"""Commands of the projections stage: `entitled migrate`, `entitled api`, `entitled catalog`."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType

import click
from starlette.routing import BaseRoute

from entitled.settings import Settings


def database_settings(settings: Settings) -> Settings:
    """`settings`, which must name a database (the `entitled` command fills DATABASE_URL
    with the local Postgres service when nothing else is configured)."""
    if not settings.database_url:
        raise click.UsageError("no database: set DATABASE_URL")
    return settings


async def _migrate(url: str) -> str:
    import psycopg

    from projections import schema

    async with await psycopg.AsyncConnection.connect(url) as conn:
        active = await schema.migrate(conn)
        await conn.commit()
    return active


@click.command()
def migrate() -> None:
    """Create or update the Postgres schema (idempotent); print the active version."""
    import psycopg

    settings = database_settings(Settings.from_env())
    assert settings.database_url is not None
    try:
        active = asyncio.run(_migrate(settings.database_url))
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
    click.echo(f"migrated: active projection schema {active}")


class _HideQueryToken(logging.Filter):
    """The access log shows each request's query string; `?token=` (the page, the event
    stream: an EventSource cannot send headers) must not reach the log."""

    _TOKEN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def api_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The options of `entitled api` (shared with the shell's composition of it)."""
    fn = click.option("--log-level", default="info", show_default=True)(fn)
    fn = click.option(
        "--port", default=8001, show_default=True, type=int, help="Port to listen on."
    )(fn)
    return click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(fn)


def run_api(
    host: str,
    port: int,
    log_level: str,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Serve the read API until SIGTERM/SIGINT (`extra_routes`: see `create_app`)."""
    import uvicorn

    from projections.api import create_app

    settings = database_settings(Settings.from_env())
    click.echo(f"api: http://{host}:{port}/ (token {'required' if settings.api_token else 'off'})")
    from entitled import logs

    logs.configure(log_level)
    app = create_app(settings, extra_routes=extra_routes, on_close=on_close)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    )
    logging.getLogger("uvicorn.access").addFilter(_HideQueryToken())  # after uvicorn's config
    exit_server = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        # Open event streams never end by themselves: end them, or shutdown waits for them.
        app.state.watcher.end_waits()
        exit_server(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


@click.command()
@api_options
def api(host: str, port: int, log_level: str) -> None:
    """Serve the search and read API and the WebFlicks page."""
    run_api(host, port, log_level)


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
