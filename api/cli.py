"""`entitled api`: the read API process (search, entitlements, the change feed, the page) with
`POST /v1/refresh` (from `ingest`) mounted."""

from __future__ import annotations

import ipaddress
import logging
import re
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


def run_api(
    host: str,
    port: int,
    log_level: str,
    insecure: bool = False,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Serve the read API until SIGTERM/SIGINT (`extra_routes`: see `create_app`)."""
    from api.app import create_app
    from entitled import logs, serving

    settings = database_settings(Settings.from_env())
    logs.configure(log_level)
    check_exposure(settings, host, insecure)
    required = [
        level
        for level, value in (("read", settings.api_token), ("admin", settings.admin_token))
        if value
    ]
    click.echo(
        f"api: http://{host}:{port}/ (tokens: {', '.join(required) or 'none, loopback only'}; "
        f"hosts: {', '.join(settings.allowed_hosts)})"
    )
    app = create_app(settings, extra_routes=extra_routes, on_close=on_close)
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
    server.run()


@click.command()
@api_options
def api(host: str, port: int, log_level: str, insecure: bool) -> None:
    """Serve the search and read API, the WebFlicks page and POST /v1/refresh."""
    refresh = RefreshEndpoint(Settings.from_env())
    run_api(
        host,
        port,
        log_level,
        insecure,
        extra_routes=[refresh.route()],
        on_close=[refresh.close],
    )
