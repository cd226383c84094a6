"""Commands of the ingest stage: `entitled ingest` (the webhook service).

`backfill` and `reconcile` are added here by the backfill module's owner.
"""

from __future__ import annotations

import asyncio
import dataclasses

import click

from entitled.settings import Settings

# Room for key and headers above the largest body, so a body at the limit fits the topic.
_TOPIC_RECORD_OVERHEAD = 64 * 1024


def topic_configs(settings: Settings) -> dict[str, str]:
    """Topic configs the ingest needs: keep forever, accept records as large as we accept."""
    return {
        "retention.ms": "-1",
        "max.message.bytes": str(settings.max_body_bytes + _TOPIC_RECORD_OVERHEAD),
    }


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True)
def ingest(host: str, port: int, log_level: str) -> None:
    """Receive Stripe webhooks and write them, verified and byte for byte, to the log."""
    import uvicorn

    from entitled import services
    from entitled.services.errors import ServicesError
    from ingest.app import create_app

    settings = Settings.from_env()
    if not settings.webhook_secrets:
        raise click.UsageError(
            "no webhook secret: set STRIPE_WEBHOOK_SECRET to your endpoint's signing secret "
            "(whsec_...; several comma-separated during a rotation)"
        )
    try:
        if not settings.kafka_bootstrap_servers:
            bootstrap = services.endpoints(settings).bootstrap
            settings = dataclasses.replace(settings, kafka_bootstrap_servers=bootstrap)
        assert settings.kafka_bootstrap_servers is not None
        asyncio.run(
            services.ensure_topic(
                settings.kafka_bootstrap_servers,
                settings.topic,
                settings.partitions,
                settings.replication_factor,
                topic_configs(settings),
            )
        )
    except ServicesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ingest: topic {settings.topic} on {settings.kafka_bootstrap_servers}")
    from entitled import logs

    logs.configure(log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
