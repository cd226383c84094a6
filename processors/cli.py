"""CLI of the processors: `worker`, `replay`, `deadletters`, `status`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg
from aiokafka.errors import KafkaError

from entitled import heap, loops
from entitled.crypto import CryptoError
from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore

if TYPE_CHECKING:
    from .replay import ReplayReport

T = TypeVar("T")


def resolved_settings() -> Settings:
    """Settings from the environment (the `entitled` command has named the local services
    there when nothing else was configured), with the rule plugins it names imported (they
    register rules as they are imported)."""
    settings = Settings.from_env()
    for module in settings.rule_plugins:
        importlib.import_module(module)
    return settings


async def _patiently(what: Callable[[], Awaitable[T]], patience_s: float) -> T:
    """`what()`, retried with backoff while Kafka or Postgres is unavailable (a worker may
    start while either restarts) instead of dying at once; a clear error after `patience_s`."""
    delay, deadline = 0.2, time.monotonic() + patience_s
    while True:
        try:
            return await what()
        except (psycopg.OperationalError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise click.ClickException(f"Kafka or Postgres unavailable: {exc}") from exc
            logging.getLogger(__name__).warning("waiting for Kafka/Postgres: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def prepare(settings: Settings, *, patience_s: float = 120.0) -> str:
    """Create the topic and migrate the schema (both idempotent); return the active schema."""
    return await _patiently(lambda: _prepare_once(settings), patience_s)


async def _prepare_once(settings: Settings) -> str:
    assert settings.kafka_bootstrap_servers and settings.database_url
    await ensure_event_topic(settings)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        active = await db.migrate(conn)
        await conn.commit()
    return active


async def start_keyring(
    settings: Settings, *, follow: bool = False, patience_s: float = 120.0
) -> Keyring:
    """The process's keyring, read to the end; a missing or wrong master key is a clear
    error and a non-zero exit at once, before anything is read from the log. Kafka being
    briefly away (a restart while this process starts) is waited for, as in `prepare`."""

    async def started() -> Keyring:
        keyring = Keyring(settings)
        await keyring.start(follow=follow)  # stops what it started when it fails
        return keyring

    try:
        return await _patiently(started, patience_s)
    except CryptoError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option("--loglevel", default="info", show_default=True)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics, /livez and /readyz on ENTITLED_METRICS_HOST:PORT"
    " (default: ENTITLED_WORKER_METRICS_PORT; off when neither is set).",
)
def worker(loglevel: str, metrics_port: int | None) -> None:
    """Fold the event topic into the active projection version (a Faust worker)."""
    from faust.worker import Worker

    from .app import create_app
    from .membership import WorkerIdTaken, claim_membership
    from .runner import BatchRunner

    settings = resolved_settings()
    if metrics_port is not None:
        settings = replace(settings, worker_metrics_port=metrics_port)
    loops.install()  # this loop and the Faust consumer thread's (entitled.loops)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(prepare(settings))
    keyring = loop.run_until_complete(start_keyring(settings, follow=True))
    try:
        membership = loop.run_until_complete(_patiently(lambda: claim_membership(settings), 120))
    except WorkerIdTaken as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_app(settings, keyring, membership)
    runner: BatchRunner = app.runner  # type: ignore[attr-defined]

    class DrainingWorker(Worker):
        """SIGTERM: /readyz 503 and no new batch at once; the batch in flight commits
        before the pool closes (see create_app); the consumer leaves the group on stop."""

        def _on_sigterm(self) -> None:
            runner.draining = True
            super()._on_sigterm()

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            # Faust, its clients and our app are built: out of every full collection's
            # walk, which held each batch in flight (entitled.heap)
            heap.freeze()

    worker = DrainingWorker(app, loglevel=loglevel, loop=loop, quiet=True)
    # No terminal spinner: at --loglevel warning or above Faust adds one, and to turn it
    # on every log call it sets the root logger to DEBUG, so every debug line of aiokafka
    # and Faust was formatted into a record (~6 % of a live worker's time, measured).
    worker.spinner = None
    worker.execute_from_commandline()


@click.command()
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics, /livez and /readyz on ENTITLED_METRICS_HOST:PORT (default: off).",
)
def relay(metrics_port: int | None) -> None:
    """Publish the change feed to the Kafka topic of changes (ENTITLED_CHANGES_TOPIC)."""
    from entitled import health

    from .relay import Relay

    settings = resolved_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        await prepare(settings)
        r = Relay(settings)
        heap.freeze()  # started: see entitled.heap
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, r.stop)  # publish and mark what is in flight, exit 0
        server = None
        if metrics_port is not None:
            server = asyncio.create_task(health.serve(r, metrics_port, settings.metrics_host))
        try:
            await r.run()
        finally:
            if server is not None:
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server

    loops.install()  # entitled.loops
    asyncio.run(run())


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
@click.option(
    "--drift", is_flag=True, help="List customers whose Stripe summary and features disagree."
)
def status(as_json: bool, drift: bool) -> None:
    """Active version, lag per partition (events, seconds), dead letters, the regroup queue;
    or `--drift`."""
    from .status import collect, collect_drift, render_drift

    settings = resolved_settings()
    if drift:
        found = asyncio.run(collect_drift(settings))
        click.echo(json.dumps(found, indent=2) if as_json else render_drift(found))
        return
    info = asyncio.run(collect(settings))
    if as_json:
        click.echo(json.dumps(info, default=str, indent=2))
        return
    click.echo(f"active version: {info['active']}")
    click.echo(f"topic: {info['topic']}")
    click.echo("partition  checkpoint  end  lag  lag_seconds")
    for p in info["partitions"]:
        click.echo(
            f"{p['partition']:>9}  {p['checkpoint']:>10}  {p['end']:>3}  {p['lag']:>3}"
            f"  {p['lag_seconds']:.1f}"
        )
    click.echo(f"total lag: {info['lag']} events, oldest unfolded {info['lag_seconds']:.1f} s")
    click.echo(f"dead letters: {info['dead_letters']}")
    click.echo(
        f"regrouped subscribers queued: {info['regroup_queue']}"
        f" (oldest {info['regroup_queue_oldest_s']:.1f} s)"
    )


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            "refusing to go on without confirmation: no terminal to ask; pass --yes"
        )
    if not click.confirm(question, default=False):
        raise click.Abort()


@click.command()
@click.option("--dry-run", is_flag=True, help="Build, then report differences; do not swap.")
@click.option("--customer", default=None, help="Rebuild one customer's rows in place.")
@click.option("--rollback", is_flag=True, help="Make the previous version active again.")
@click.option("--list", "list_versions", is_flag=True, help="List the versions.")
@click.option("--drop", type=int, default=None, help="Drop a retired or ready version.")
@click.option(
    "--swap", "swap", type=int, default=None, help="Swap in a ready version (a dry run's)."
)
@click.option("--force", is_flag=True, help="Swap even when the swap gate refuses.")
@click.option(
    "--max-loss",
    type=click.FloatRange(0, 1),
    default=None,
    help="Largest share of entitled customers that may lose something before the swap is"
    " refused (default: ENTITLED_REPLAY_MAX_LOSS, 0.01).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes for the bulk pass (each owns some partitions). More than one is faster,"
    " but the history it records then orders events of different processes' partitions"
    " (a product, its subscribers) only approximately.",
)
def replay(
    dry_run: bool,
    customer: str | None,
    rollback: bool,
    list_versions: bool,
    drop: int | None,
    swap: int | None,
    force: bool,
    max_loss: float | None,
    yes: bool,
    jobs: int,
) -> None:
    """Rebuild the projections from the log into a new version, then swap atomically."""
    from projections.errors import VersionError

    from .errors import ReplayError, SwapRefused

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = resolved_settings()
    if max_loss is not None:
        settings = replace(settings, replay_max_loss=max_loss)
    asyncio.run(ensure_event_topic(settings))  # an empty log is a log too: same topic
    try:
        if list_versions:
            _replay_list(settings)
        elif drop is not None:
            _replay_drop(settings, drop, yes)
        elif rollback:
            _replay_rollback(settings, yes, force=force)
        elif customer:
            _replay_customer(settings, customer, yes)
        elif swap is not None:
            _replay_swap(settings, swap, force=force, yes=yes)
        else:
            _replay_build(settings, dry_run=dry_run, force=force, yes=yes, jobs=jobs)
    except SwapRefused as exc:
        _echo_differences(exc.report)  # each one was printed as the refused swap read it
        v = exc.report.version
        raise click.ClickException(
            f"swap refused: {exc}. v{v} stays built as a ready version, not active: inspect"
            f" it (schema {exc.report.schema}), swap it in anyway with `entitled replay --swap"
            f" {v} --force`, or drop it with `entitled replay --drop {v}`"
        ) from exc
    except (ReplayError, VersionError) as exc:
        raise click.ClickException(str(exc)) from exc


def _replay_list(settings: Settings) -> None:
    from .replay import list_versions

    for v in asyncio.run(list_versions(settings)):
        mark = "*" if v.state == "active" else " "
        click.echo(
            f"{mark} v{v.version:<4} {v.state:<8} {v.bytes / 1e6:>9.1f} MB"
            f"  created {v.created_at:%Y-%m-%d %H:%M:%S}"
        )


def _replay_drop(settings: Settings, version: int, yes: bool) -> None:
    from .replay import drop_version

    _confirm(f"Drop version {version} for good?", yes)
    asyncio.run(drop_version(settings, version))
    click.echo(f"dropped v{version}")


def _replay_rollback(settings: Settings, yes: bool, *, force: bool) -> None:
    from .replay import roll_back

    _confirm("Make the previous version active again (caught up with the log first)?", yes)
    version = asyncio.run(roll_back(settings, force=force, each=_echo_difference))
    click.echo(f"active version is now v{version}")


def _replay_customer(settings: Settings, customer: str, yes: bool) -> None:
    from .rebuild import rebuild_customer

    _confirm(f"Rebuild {customer}'s rows in place from the log?", yes)
    click.echo(asyncio.run(rebuild_customer(settings, customer)))


def _replay_swap(settings: Settings, version: int, *, force: bool, yes: bool) -> None:
    from .replay import swap_ready

    _confirm(f"Catch version {version} up with the log and make it active?", yes)
    report = asyncio.run(swap_ready(settings, version, force=force, each=_echo_difference))
    _echo_swapped(report)


def _replay_build(settings: Settings, *, dry_run: bool, force: bool, yes: bool, jobs: int) -> None:
    from .replay import replay as run

    if not dry_run:
        _confirm("Rebuild every projection from the log and swap when done?", yes)
    report = asyncio.run(
        run(
            settings,
            dry_run=dry_run,
            progress=True,
            jobs=jobs,
            force=force,
            each=_echo_difference,  # a dry run's, or a refused swap's, as they are read
        )
    )
    click.echo(
        f"v{report.version}: {report.events} events in {report.seconds:.1f}s"
        f" ({report.rate:,.0f} events/s)"
    )
    if dry_run:
        _echo_differences(report)
        if report.behind:
            click.echo(
                f"compared where the live version stands: {report.behind} events of the log"
                " are past it (the live worker folds them; run again to include them)"
            )
        if report.refusal is not None:
            click.echo(f"a swap would be refused: {report.refusal}")
        click.echo("nothing swapped")
    else:
        _echo_swapped(report)


def _echo_difference(d: dict[str, Any]) -> None:
    """One line of the dry-run report: a customer whose entitlements differ from the live
    version (printed as the comparison reads them: there may be one per customer)."""
    click.echo(
        f"{d['customer']}: groups +{d['groups_gained']} -{d['groups_lost']}"
        f" movies +{d['movies_gained']} -{d['movies_lost']}"
    )


def _echo_differences(report: ReplayReport) -> None:
    """The dry-run report's last line (its customers were printed by `_echo_difference`)."""
    if not report.differing:
        click.echo("no differences against the live version")
    click.echo(f"{report.differing} customers differ")


def _echo_swapped(report: ReplayReport) -> None:
    if report.refusal is not None:
        click.echo(f"swapped although the swap gate refuses (--force): {report.refusal}")
    click.echo(f"swapped: v{report.version} is active")
