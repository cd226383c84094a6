"""CLI of the processors: `worker`, `replay`, `deadletters`, `status`."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import time
from dataclasses import replace
from typing import Any

import click
import psycopg
from aiokafka.errors import KafkaError

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from projections import schema as db
from projections.entitlements import Policy
from projections.store import ProjectionStore


def resolved_settings() -> Settings:
    """Settings from the environment (the `entitled` command has named the local services
    there when nothing else was configured), with the rule plugins it names imported (they
    register rules as they are imported)."""
    settings = Settings.from_env()
    for module in settings.rule_plugins:
        importlib.import_module(module)
    return settings


async def prepare(settings: Settings, *, patience_s: float = 120.0) -> str:
    """Create the topic and migrate the schema (both idempotent); return the active schema.

    Kafka or Postgres may be restarting while a worker starts: retry with backoff for a
    while instead of dying at once.
    """
    delay, deadline = 0.2, time.monotonic() + patience_s
    while True:
        try:
            return await _prepare_once(settings)
        except (psycopg.OperationalError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise click.ClickException(f"Kafka or Postgres unavailable: {exc}") from exc
            logging.getLogger(__name__).warning("waiting for Kafka/Postgres: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _prepare_once(settings: Settings) -> str:
    assert settings.kafka_bootstrap_servers and settings.database_url
    await ensure_event_topic(settings)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        active = await db.migrate(conn)
        await conn.commit()
    return active


@click.command()
@click.option("--loglevel", default="info", show_default=True)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics, /healthz and /readyz on 127.0.0.1:PORT"
    " (default: ENTITLED_WORKER_METRICS_PORT; off when neither is set).",
)
def worker(loglevel: str, metrics_port: int | None) -> None:
    """Fold the event topic into the active projection version (a Faust worker)."""
    from faust.worker import Worker

    from .app import create_app

    settings = resolved_settings()
    if metrics_port is not None:
        settings = replace(settings, worker_metrics_port=metrics_port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(prepare(settings))
    assert settings.kafka_bootstrap_servers
    app = create_app(settings, settings.kafka_bootstrap_servers)
    Worker(app, loglevel=loglevel, loop=loop, quiet=True).execute_from_commandline()


@click.group()
def deadletters() -> None:
    """See and release events parked by a failing fold rule."""


def _store(settings: Settings) -> ProjectionStore:
    return ProjectionStore(settings.topic, Policy.from_settings(settings))


async def _with_conn(settings: Settings, fn: Any) -> Any:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        return await fn(conn)


@deadletters.command("list")
@click.option("--all", "include_resolved", is_flag=True, help="Include applied and skipped.")
@click.option("--json", "as_json", is_flag=True)
def deadletters_list(include_resolved: bool, as_json: bool) -> None:
    """List dead letters: poison events and the events parked behind them."""
    settings = resolved_settings()
    store = _store(settings)
    rows = asyncio.run(
        _with_conn(settings, lambda c: store.dead_letters(c, include_resolved=include_resolved))
    )
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
        return
    for r in rows:
        click.echo(
            f"{r['id']:>6} {r['state']:<8} {r['key']:<28} {r['partition']}/{r['offset']:<8}"
            f" {r['event_type'] or '-':<36} {r['error'] or ''}"
        )


@deadletters.command("retry")
@click.argument("keys", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every parked customer.")
def deadletters_retry(keys: tuple[str, ...], every: bool) -> None:
    """Fold the parked events of KEYS (customer ids) again with today's rules."""
    _release(keys, every, skip=False)


@deadletters.command("skip")
@click.argument("keys", nargs=-1, required=True)
def deadletters_skip(keys: tuple[str, ...]) -> None:
    """Give up on the poison event of KEYS and fold the events parked behind it."""
    _release(keys, False, skip=True)


def _release(keys: tuple[str, ...], every: bool, *, skip: bool) -> None:
    settings = resolved_settings()
    store = _store(settings)

    async def run(conn: psycopg.AsyncConnection[Any]) -> int:
        targets = list(keys)
        if every:
            targets = sorted({r["key"] for r in await store.dead_letters(conn)})
        failed = 0
        for key in targets:
            result = await store.release(conn, key, skip_poison=skip)
            ok = result.poison == 0
            failed += not ok
            click.echo(
                f"{key}: "
                + (f"applied {result.applied} events" if ok else "still failing, stays parked")
            )
        return failed

    if not keys and not every:
        raise click.UsageError("name customer ids, or --all")
    failed = asyncio.run(_with_conn(settings, run))
    sys.exit(1 if failed else 0)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Active version, lag per partition, dead letters."""
    from .status import collect

    settings = resolved_settings()
    info = asyncio.run(collect(settings))
    if as_json:
        click.echo(json.dumps(info, default=str, indent=2))
        return
    click.echo(f"active version: {info['active']}")
    click.echo(f"topic: {info['topic']}")
    click.echo("partition  checkpoint  end  lag")
    for p in info["partitions"]:
        click.echo(f"{p['partition']:>9}  {p['checkpoint']:>10}  {p['end']:>3}  {p['lag']}")
    click.echo(f"total lag: {info['lag']}")
    click.echo(f"dead letters: {info['dead_letters']}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Build, then report differences; do not swap.")
@click.option("--customer", default=None, help="Rebuild one customer's rows in place.")
@click.option("--rollback", is_flag=True, help="Make the previous version active again.")
@click.option("--list", "list_versions", is_flag=True, help="List the versions.")
@click.option("--drop", type=int, default=None, help="Drop a retired version.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=lambda: min(2, os.cpu_count() or 1),
    show_default="min(2, CPUs)",
    help="Processes for the bulk pass (each owns some partitions).",
)
def replay(
    dry_run: bool,
    customer: str | None,
    rollback: bool,
    list_versions: bool,
    drop: int | None,
    yes: bool,
    jobs: int,
) -> None:
    """Rebuild the projections from the log into a new version, then swap atomically."""
    from .replay import run_replay_command

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = resolved_settings()
    asyncio.run(ensure_event_topic(settings))  # an empty log is a log too: same topic
    run_replay_command(
        settings,
        dry_run=dry_run,
        customer=customer,
        rollback=rollback,
        list_versions=list_versions,
        drop=drop,
        yes=yes,
        jobs=jobs,
    )
