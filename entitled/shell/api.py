"""`entitled api`: the read API (`projections`) with `POST /v1/refresh` (`ingest`) mounted.

The read API lives in `projections`, which must not import `ingest`; the shell, which sits on
top of both, composes the process.
"""

from __future__ import annotations

import click

from entitled.settings import Settings
from ingest.refresh_app import RefreshEndpoint
from projections.cli import api_options, run_api

__all__ = ["api"]


@click.command()
@api_options
def api(host: str, port: int, log_level: str) -> None:
    """Serve the search and read API, the WebFlicks page and POST /v1/refresh."""
    refresh = RefreshEndpoint(Settings.from_env())
    run_api(host, port, log_level, extra_routes=[refresh.route()], on_close=[refresh.close])
