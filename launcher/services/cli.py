"""`entitled services up|down|status|prepare`: the local Kafka and PostgreSQL."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from entitled.settings import Settings
from launcher import services as svc
from launcher.services.errors import ServicesError

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Print a ServicesError as its message (it says how to fix it) and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServicesError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group()
def services() -> None:
    """The local Kafka and PostgreSQL used by `entitled dev` and the tests."""


# Shared with `entitled dev`, which starts the same services.
replicas_option = click.option(
    "--replicas",
    default=0,
    show_default=True,
    type=click.IntRange(0, 8),
    help="Streaming replicas (hot standbys) of the local PostgreSQL; the read API reads from them.",
)
secure_option = click.option(
    "--secure",
    is_flag=True,
    help="Kafka over SASL_SSL only (SCRAM-SHA-512 users, a certificate from a local CA) and "
    "PostgreSQL over TLS: as in production. Prints the settings clients need.",
)


@services.command()
@click.option("--brokers", default=1, show_default=True, help="KRaft nodes (1 or 3).")
@click.option("--fast", is_flag=True, help="PostgreSQL without fsync: throw-away data only.")
@replicas_option
@secure_option
@_friendly
def up(brokers: int, fast: bool, replicas: int, secure: bool) -> None:
    """Start Kafka and PostgreSQL (idempotent) and print where they answer."""
    settings = Settings.from_env()
    started = time.monotonic()
    endpoints = svc.up(settings, brokers=brokers, fast=fast, secure=secure)
    click.echo(f"KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap}")
    for name, value in endpoints.kafka_env.items():
        # the local broker's generated password: printed so that `export $(...)` works
        if name != "KAFKA_BOOTSTRAP_SERVERS" and value:
            click.echo(f"{name}={value}")
    click.echo(f"DATABASE_URL={endpoints.database_url}")
    if replicas:
        click.echo(f"ENTITLED_READ_DATABASE_URL={','.join(svc.up_replicas(settings, replicas))}")
    _print_status(svc.status(settings))
    click.echo(f"ready in {time.monotonic() - started:.1f} s")


@services.command()
@click.option("--wipe", is_flag=True, help="Also delete the data, logs and state.")
@_friendly
def down(wipe: bool) -> None:
    """Stop the services and replicas (by pid); with --wipe delete their data too."""
    settings = Settings.from_env()
    svc.down(settings, wipe=wipe)
    click.echo(f"stopped{' and wiped' if wipe else ''}: {settings.services_dir}")


@services.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_friendly
def status(as_json: bool) -> None:
    """Ports, pids, data directories, health and log files."""
    report = svc.status(Settings.from_env())
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)


@services.command()
@_friendly
def prepare() -> None:
    """Download the Kafka jars into the cache and check the PostgreSQL binaries."""
    settings = Settings.from_env()
    started = time.monotonic()
    svc.prepare(settings)
    click.echo(f"Kafka jars in {settings.cache}; ready in {time.monotonic() - started:.1f} s")


def _health(ok: bool) -> str:
    return "healthy" if ok else "DOWN"


def _print_status(report: dict[str, Any]) -> None:
    click.echo(f"services dir: {report['services_dir']}")
    jars = "ready" if report["jars_ready"] else "not downloaded (run `entitled services prepare`)"
    click.echo(f"kafka jars:   {report['jar_cache']} ({jars})")
    kafka, pg = report["kafka"], report["postgres"]
    missing = "not created (run `entitled services up`)"
    click.echo(
        "kafka:        "
        + (missing if kafka is None else f"{kafka['bootstrap']} {kafka['protocol']}")
        + ("" if kafka is None else f" {_health(kafka['healthy'])}")
    )
    for n in [] if kafka is None else kafka["nodes"]:
        click.echo(
            f"  node {n['node_id']}: port {n['port']} controller {n['controller_port']} "
            f"pid {n['pid'] or '-'} {_health(n['healthy'])}{_files(n)}"
        )
    click.echo(
        "postgres:     "
        + (missing if pg is None else f"{pg['database_url']} pid {pg['pid'] or '-'}")
        + ("" if pg is None else f" {_health(pg['healthy'])}")
        + ("" if pg is None or not pg["fast"] else " (fast, not durable)")
        + ("" if pg is None else _files(pg))
    )
    for r in report["replicas"]:
        click.echo(
            f"  replica {r['index']}: {r['database_url']} pid {r['pid'] or '-'} "
            f"{_health(r['healthy'])} streaming {r['streaming'] or '-'} "
            f"lag {_figure(r['lag_bytes'], ' B')} {_figure(r['lag_seconds'], ' s')}{_files(r)}"
        )


def _files(service: dict[str, Any]) -> str:
    return f"\n    data {service['data_dir']}\n    log  {service['log_file']}"


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "?" + unit
    return f"{value:.3f}{unit}" if isinstance(value, float) else f"{value}{unit}"
