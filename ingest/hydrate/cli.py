"""Commands `entitled hydrate` and `entitled refresh` (mapped in `launcher/cli.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click
from prometheus_client import generate_latest

from entitled import health, heap, loops
from entitled.settings import Settings

if TYPE_CHECKING:
    from ingest.hydrate.hydrator import GroupWatch
    from ingest.hydrate.metrics import HydratorMetrics

# settings, the hydrators' group -> this copy's membership of it
Claim = Callable[[Settings, str], Awaitable["GroupWatch"]]

log = logging.getLogger(__name__)

NO_KEY_WARNING = (
    "STRIPE_API_KEY is not set: the hydrator fetches nothing. Events that need completing "
    "are logged as they are and counted as unhydrated (entitled_hydrator_events"
    '{outcome="unhydrated"}); run `entitled hydrate --pending` with a key to complete them.'
)


async def _membership(claim: Claim | None, settings: Settings, group: str) -> GroupWatch | None:
    """This copy's membership, when it can have one; a Postgres that does not answer is
    logged and the hydrator runs without (it needs Kafka alone)."""
    if claim is None or not settings.database_url:
        return None
    try:
        return await asyncio.wait_for(claim(settings, group), 30)
    except click.ClickException:
        raise  # a worker id held by another running copy: a clear error
    except Exception as exc:
        log.warning("no group membership (a dead copy waits out the session): %r", exc)
        return None


class _Probe:
    """What /livez, /readyz and /metrics report of the hydrator (`entitled.health`)."""

    stalled: str | None = None

    def __init__(self, metrics: HydratorMetrics, stop: asyncio.Event) -> None:
        self.metrics = metrics
        self.stop = stop

    def ready(self) -> bool:
        return not self.stop.is_set()  # 503 from the first moment of a drain

    def render_metrics(self) -> bytes:
        return generate_latest(self.metrics.registry)


def hydrate_with(claim: Claim | None) -> click.Command:
    """The `entitled hydrate` command; with `claim` (given by `launcher.hydrate`: the worker's
    group membership, which lives in `processors`, a stage `ingest` may not import) and a
    `DATABASE_URL`, each copy is a static member whose dead peers are removed from the group
    at once (issue 24). Without either, a dynamic member: a dead copy's partitions move after
    the session timeout, and the hydrator needs Kafka alone."""

    @click.command()
    @click.option(
        "--pending", is_flag=True, help="Complete what is pending up to the log end, exit."
    )
    @click.option("--rps", type=float, help="Stripe requests per second [default: 20].")
    @click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True)
    @click.option(
        "--metrics-port",
        type=int,
        help="Serve /metrics, /livez, /readyz on ENTITLED_METRICS_HOST:PORT.",
    )
    @click.option("--log-level", default="info", show_default=True)
    def hydrate(
        pending: bool, rps: float | None, concurrency: int, metrics_port: int | None, log_level: str
    ) -> None:
        """Complete logged events that lack what the projection needs, from the Stripe API."""
        from entitled import logs
        from ingest.hydrate.hydrator import Hydrator, group_of
        from ingest.hydrate.metrics import HydratorMetrics
        from ingest.stripe_api import StripeApi

        logs.configure(log_level)
        # the stripe library logs every request at INFO: three lines per fetch
        logging.getLogger("stripe").setLevel(max(logging.WARNING, logging.getLogger().level))
        settings = Settings.from_env(backfill_rps=rps)
        if pending and not settings.stripe_api_key:
            raise click.UsageError(
                "--pending needs STRIPE_API_KEY (and STRIPE_API_BASE for a fake)"
            )

        async def run() -> None:
            api = None
            if settings.stripe_api_key:
                api = StripeApi.from_settings(settings)
            else:
                log.warning(NO_KEY_WARNING)
            metrics = HydratorMetrics(api)
            stop = asyncio.Event()
            server = None
            if metrics_port is not None:
                probe = _Probe(metrics, stop)
                serving = health.serve(probe, metrics_port, settings.metrics_host)
                server = asyncio.create_task(serving)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                membership = await _membership(claim, settings, group_of(settings))
            hydrator = Hydrator(
                settings, api=api, metrics=metrics, concurrency=concurrency, membership=membership
            )
            heap.freeze()  # built: see entitled.heap
            log.info(
                "hydrator: topic %s, group %s, %s",
                settings.topic,
                group_of(settings),
                f"{settings.backfill_rps:g} requests/s" if api else "idle (no key)",
            )
            try:
                await hydrator.run(pending_only=pending, stop=stop)
            finally:
                if api is not None:
                    await api.close()
                if server is not None:
                    server.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await server
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(hydrator.result.outcomes.items()))
            click.echo(f"hydrate: {outcomes or 'nothing to do'}")

        loops.install()  # entitled.loops
        asyncio.run(run())

    return hydrate


hydrate = hydrate_with(None)


@click.command()
@click.argument("ids", nargs=-1, required=True)
def refresh(ids: tuple[str, ...]) -> None:
    """Read objects (cus_..., sub_..., cs_..., in_..., pi_...) from Stripe now and log them;
    print the event id written for each."""
    from ingest.refresh.fetch import refresh as run

    settings = Settings.from_env()
    if not settings.stripe_api_key:
        raise click.UsageError("no Stripe key: set STRIPE_API_KEY (and STRIPE_API_BASE for a fake)")
    results = asyncio.run(run(settings, ids))
    for item in results:
        click.echo(f"{item.object_id}\t{item.event_id or '-'}\t{item.outcome}")
    # an object whose state no event describes (an open checkout session) is not an error
    if any(item.outcome in ("unknown_id", "not_found") for item in results):
        raise SystemExit(1)
