"""`entitled api`: the read API process (search, entitlements, the change feed, the page) with
`POST /v1/refresh` (from `ingest`) mounted."""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

import click
from starlette.routing import BaseRoute

from entitled import tokens
from entitled.settings import Settings
from ingest.refresh.app import RefreshEndpoint
from projections.cli import database_settings

__all__ = ["api", "api_options", "run_api"]


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


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the API on this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(settings: Settings, host: str, insecure: bool) -> None:
    """Refuse (exit 2) to serve every customer's data beyond loopback without both tokens;
    `--insecure` serves all the same, with a warning on every start."""
    if is_loopback(host) or (settings.api_token and settings.admin_token):
        return
    missing = " and ".join(
        name
        for name, value in (
            ("ENTITLED_API_TOKEN", settings.api_token),
            ("ENTITLED_ADMIN_TOKEN", settings.admin_token),
        )
        if not value
    )
    if not insecure:
        raise click.UsageError(
            f"refusing to listen on {host} without {missing}: whoever reaches it could read "
            "every customer and change the catalogue. Set them (or their _FILE twins), listen "
            "on 127.0.0.1, or pass --insecure to serve anyway."
        )
    warning = (
        f"WARNING: --insecure: serving on {host} without {missing}; "
        + ("reads and " if not tokens.required(settings) else "")
        + "admin routes are open to whoever reaches this address"
    )
    click.secho(warning, err=True, fg="red", bold=True)
    logging.getLogger("entitled.api").warning(warning)


def api_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The options of `entitled api` (shared with the launcher's `entitled dev`)."""
    fn = click.option(
        "--insecure",
        is_flag=True,
        help="Serve beyond loopback without ENTITLED_API_TOKEN / ENTITLED_ADMIN_TOKEN "
        "(warned about on every start).",
    )(fn)
    fn = click.option("--log-level", default="info", show_default=True)(fn)
    fn = click.option(
        "--port", default=8001, show_default=True, type=int, help="Port to listen on."
    )(fn)
    return click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(fn)


Extras = Callable[
    [Settings], tuple[Sequence[BaseRoute], Sequence[Callable[[], Awaitable[None]]]]
]  # routes mounted beside the read API, with their clean-ups (see `create_app`)


def run_api(
    host: str,
    port: int,
    log_level: str,
    insecure: bool = False,
    *,
    workers: int | None = None,
    extras: Extras | None = None,
) -> None:
    """Serve the read API until SIGTERM/SIGINT, in `workers` processes (default
    ENTITLED_API_WORKERS, 1) sharing the port (`api.workers`). `extras` must be a
    module-level function: each worker calls it."""
    from entitled import logs

    settings = database_settings(Settings.from_env(api_workers=workers))
    logs.configure(log_level)
    check_exposure(settings, host, insecure)
    required = [
        level
        for level, value in (("read", settings.api_token), ("admin", settings.admin_token))
        if value
    ]
    click.echo(
        f"api: http://{host}:{port}/ (tokens: {', '.join(required) or 'none, loopback only'}; "
        f"hosts: {', '.join(settings.allowed_hosts)}"
        + (f"; {settings.api_workers} workers" if settings.api_workers > 1 else "")
        + ")"
    )
    if settings.api_workers > 1:
        from api import workers as api_workers

        sock = api_workers.bound_socket(host, port)
        target = functools.partial(_serve, settings, host, port, log_level, extras)
        raise SystemExit(api_workers.serve(settings.api_workers, sock, target))
    _serve(settings, host, port, log_level, extras)


def _serve(
    settings: Settings,
    host: str,
    port: int,
    log_level: str,
    extras: Extras | None,
    sock: socket.socket | None = None,
) -> None:
    """One server: the whole process, or one of its workers on the socket they share."""
    from api.app import create_app
    from entitled import logs, serving

    logs.configure(log_level)  # again in a worker: a fresh interpreter
    routes, on_close = extras(settings) if extras is not None else ((), ())
    app = create_app(settings, extra_routes=routes, on_close=on_close)
    # Open event streams never end by themselves: end them when the drain stops accepting,
    # or the shutdown waits for them.
    server = serving.server(
        app,
        settings,
        host=host,
        port=port,
        log_level=log_level,
        on_exit=app.state.watcher.end_waits,
    )
    logging.getLogger("uvicorn.access").addFilter(_HideQueryToken())  # after uvicorn's config
    server.run(sockets=None if sock is None else [sock])
    if sock is not None and not server.started:
        sys.exit(_STARTUP_FAILURE)


_STARTUP_FAILURE = 3  # as uvicorn's own workers exit when their server never started


def _refresh(
    settings: Settings,
) -> tuple[Sequence[BaseRoute], Sequence[Callable[[], Awaitable[None]]]]:
    refresh = RefreshEndpoint(Settings.from_env())
    return [refresh.route()], [refresh.close]


@click.command()
@api_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes answering on the port [default: ENTITLED_API_WORKERS, else 1].",
)
def api(host: str, port: int, log_level: str, insecure: bool, workers: int | None) -> None:
    """Serve the search and read API, the WebFlicks page and POST /v1/refresh."""
    run_api(host, port, log_level, insecure, workers=workers, extras=_refresh)
