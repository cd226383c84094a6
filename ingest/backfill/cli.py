"""Commands `entitled backfill` and `entitled reconcile` (mapped in `launcher/cli.py`)."""

from __future__ import annotations

import asyncio

import click

from entitled.settings import Settings
from ingest.features import FeaturesResult
from ingest.snapshots import DEFAULT_LISTS, LISTS


def _settings(rps: float | None) -> Settings:
    settings = Settings.from_env(backfill_rps=rps)
    if not settings.stripe_api_key:
        raise click.UsageError("no Stripe key: set STRIPE_API_KEY (and STRIPE_API_BASE for a fake)")
    return settings


def _lists(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_LISTS
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in LISTS]
    if unknown:
        raise click.BadParameter(f"unknown list(s) {unknown}; known: {', '.join(LISTS)}")
    return names


@click.command()
@click.option("--rps", type=float, help="Stripe requests per second [default: 20].")
@click.option("--restart", is_flag=True, help="Ignore saved cursors and list everything again.")
@click.option(
    "--lists",
    "lists_",
    help=f"Comma-separated lists to walk [default: {','.join(DEFAULT_LISTS)}; also: plans].",
)
@click.option("--page-size", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--api-version", help="Stripe-Version to request (default: stripe-python's).")
@click.option(
    "--features/--no-features",
    default=True,
    show_default=True,
    help="Then list every product's Stripe Entitlements features (they have no webhooks).",
)
def backfill(
    rps: float | None,
    restart: bool,
    lists_: str | None,
    page_size: int,
    api_version: str | None,
    features: bool,
) -> None:
    """Write every Stripe object as a snapshot event into the log; resumable."""
    from ingest.backfill.listing import backfill as run

    settings = _settings(rps)
    result = asyncio.run(
        run(
            settings,
            lists=_lists(lists_),
            restart=restart,
            page_size=page_size,
            api_version=api_version,
            features=features,
        )
    )
    for item in result.lists.values():
        state = (
            "unavailable on this server"
            if item.unavailable
            else "already done"
            if item.already_done
            else f"{item.pages} pages, {item.objects} objects, {item.written} written"
            + (f", {item.skipped} skipped" if item.skipped else "")
            + (f" (resumed after {item.resumed_after})" if item.resumed_after else "")
        )
        click.echo(f"{item.name}: {state}")
    if result.features is not None:
        click.echo(_features_line(result.features))
    if result.interrupted:
        raise click.ClickException("backfill interrupted; run it again to resume")


def _features_line(result: FeaturesResult) -> str:
    if result.unavailable:
        return "product_features: unavailable on this server"
    return (
        f"product_features: {result.products} products, {result.written} written,"
        f" {result.unchanged} unchanged"
    )


@click.command()
@click.option("--since", help="ISO date/datetime or Unix seconds [default: 30 days ago].")
@click.option("--rps", type=float, help="Stripe requests per second [default: 20].")
@click.option(
    "--features",
    is_flag=True,
    help="Instead: re-list products' Stripe Entitlements features, log those that changed.",
)
def reconcile(since: str | None, rps: float | None, features: bool) -> None:
    """Write the events of Stripe's Events API that the log is missing."""
    from ingest.features import reconcile_features
    from ingest.reconcile import parse_since
    from ingest.reconcile import reconcile as run

    settings = _settings(rps)
    if features:
        click.echo(_features_line(asyncio.run(reconcile_features(settings, rps=rps))))
        return
    try:
        since_s = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    result = asyncio.run(run(settings, since=since_s))
    click.echo(
        f"listed {result.listed}, already present {result.already_present}, "
        f"written {result.written}"
    )
