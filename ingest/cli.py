"""Command `entitled ingest` (the webhook service); the other commands of the stage are in
`ingest.backfill.cli` and `ingest.hydrate.cli`, all mapped in `launcher/cli.py`."""

from __future__ import annotations

import asyncio

import click

from entitled.crypto import CryptoError
from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import TopicError, ensure_event_topic


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True)
def ingest(host: str, port: int, log_level: str) -> None:
    """Receive Stripe webhooks and write them, verified and byte for byte, to the log."""
    from ingest.app import create_app

    settings = Settings.from_env()
    if not settings.webhook_secrets:
        raise click.UsageError(
            "no webhook secret: set STRIPE_WEBHOOK_SECRET to your endpoint's signing secret "
            "(whsec_...; several comma-separated during a rotation)"
        )
    try:
        asyncio.run(ensure_event_topic(settings))
        asyncio.run(_prove_keys(settings))
    except (TopicError, CryptoError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ingest: topic {settings.topic} on {settings.kafka_bootstrap_servers}")
    from entitled import logs

    logs.configure(log_level)
    from entitled import heap, serving

    app = create_app(settings)
    heap.freeze()  # built: see entitled.heap
    serving.server(app, settings, host=host, port=port, log_level=log_level).run()


async def _prove_keys(settings: Settings) -> None:
    """A missing or wrong master key stops the start here, before uvicorn, in one clear
    line (each process's keyring proves it again as it starts)."""
    async with Keyring(settings):
        pass
