"""The Faust worker: one agent folds the event topic into the active projection version.

Several workers in one consumer group share the partitions; Kafka moves partitions between
them, and the Postgres checkpoints (not Kafka's committed offsets) say where each resumes.
Each record's value is opened with its data key at the edge (`opening`), before the batch
reaches the runner: a forgotten customer's events arrive as `forgotten` messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from psycopg_pool import AsyncConnectionPool

from entitled import health
from entitled.kafka import faust_credentials
from entitled.keyring import Keyring
from entitled.settings import Settings

from .gauges import FoldGauges
from .lag import HeadReader
from .membership import Membership
from .opening import open_events
from .pool import make_pool
from .runner import BatchRunner
from .transport import BulkConsumer, Feed, Transport

__all__ = ["create_app"]

_REBALANCE_PATIENCE_S = 15.0
_REBALANCE_POLL_S = 0.01  # how often the end of a rebalance is looked for

log = logging.getLogger(__name__)


def _faust_app(settings: Settings, instance_id: str | None = None) -> faust.App:
    assert settings.kafka_bootstrap_servers
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        web_enabled=False,
        # Faust keeps a little local state; not in the working directory.
        datadir=str(settings.home / "worker-data"),
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        topic_disable_leader=True,
        # Offsets committed to Kafka are only a hint: the Postgres checkpoint decides.
        broker_commit_every=1000,
        broker_commit_interval=5.0,
        stream_wait_empty=False,
        producer_acks=-1,
        topic_replication_factor=settings.replication_factor,
        # Failover: a SIGKILLed worker's partitions move to the others once a survivor
        # removes it from the group (its Postgres lock went with it: `membership`), else
        # once its session times out; the survivors hear of the rebalance at their next
        # heartbeat. A SIGTERMed worker leaves the group when its consumer stops
        # (`transport`: a static member's consumer would not). aiokafka has no cooperative
        # protocol.
        consumer_group_instance_id=instance_id,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_heartbeat_s,
        # How long a rebalance waits for the survivors to rejoin; they rejoin within a
        # heartbeat, so only a hung member meets it.
        broker_rebalance_timeout=max(10.0, settings.kafka_session_timeout_s),
    )
    # a short fetch wait, and the event topic's records handed over in bulk: see there
    app.transport = Transport(app.conf.broker_consumer, app)
    return app


def create_app(
    settings: Settings, keyring: Keyring, membership: Membership | None = None
) -> faust.App:
    """The worker's Faust app; `keyring` is started (and followed) by the caller, in the
    loop the app runs in, before the app starts. With `membership` (claimed by the caller,
    in that loop) the worker is a static member that removes dead copies from the group;
    without, a dynamic member whose dead copies wait out the session timeout."""
    app = _faust_app(settings, membership.instance_id if membership else None)
    topic = app.topic(settings.topic, key_type=bytes, value_type=bytes)
    assert settings.database_url is not None
    pool = make_pool(settings.database_url)
    runner = BatchRunner(settings, pool)
    app.runner = runner  # type: ignore[attr-defined]

    async def seek_many(points: dict[int, int]) -> None:
        # In the consumer's own thread (`seek_wait` runs there): `consumer.seek` would call
        # aiokafka from this thread, racing Faust's fetcher thread (a KeyError in aiokafka's
        # `fetched_records` crashed a worker when seeks came often).
        await app.consumer.seek_wait({TP(settings.topic, p): o for p, o in points.items()})

    async def seek(partition: int, offset: int) -> None:
        await seek_many({partition: offset})

    # The agent subscribes the topic (Faust assigns its partitions); its records come in
    # bulk from the transport's feed, not one by one through the stream (transport.py).
    feed = Feed(limit=max(4 * settings.batch_size, 2_000))
    cast(Transport, app.transport).bulk[settings.topic] = feed

    @app.agent(topic, name="fold")
    async def fold(stream: faust.StreamT[bytes]) -> None:
        while True:
            records = await feed.take(settings.batch_size, settings.batch_within_s)
            batch = await open_events(keyring, records)
            await runner.handle(batch, seek)
            cast(BulkConsumer, app.consumer).ack_records(records)

    # Partitions assigned but not yet moved to their Postgres checkpoints. The seek is made
    # once Faust has finished the rebalance, not in the assignment callback: Faust's
    # recovery then still seeks every partition to Kafka's committed offset
    # (`perform_seek`), which overtook our seek and left the partition waiting for an offset
    # that never came until the stale re-seek (the 5-10 s failovers of issue 24). Records
    # that arrive before are dropped (`Expected.hold`).
    pending: set[int] = set()
    assigned_at = [0.0]  # when `pending` was last filled by an assignment
    to_resume = asyncio.Event()  # set by each assignment
    # Their checkpoints, read while Faust recovers (issue 24: the failover is not made to
    # wait for a round trip to Postgres after the rebalance). Read at the assignment, they
    # can only be behind the truth (nobody folds a partition between its assignment and
    # our seek), and what the seek reads again below the checkpoint is skipped by the store.
    early: list[asyncio.Future[dict[int, int] | None] | None] = [None]
    resuming = asyncio.Lock()  # the resume task and the timer, one at a time

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def resume_from_checkpoints(sender: Any, assigned: set[TP], **_: Any) -> None:
        pending.clear()  # a rebalance replaces the whole assignment
        pending.update(tp.partition for tp in assigned if tp.topic == settings.topic)
        runner.expected.hold(pending)  # nothing of them is folded before their seek
        feed.clear()  # fetched for the old assignment; each partition is sought again
        assigned_at[0] = time.monotonic()
        early[0] = asyncio.ensure_future(_read_points(runner, sorted(pending)))
        to_resume.set()
        if membership is not None:
            try:
                await membership.joined(_member_id(app))
            except Exception:  # the watch reconnects and records it again
                log.warning("could not record our member id", exc_info=True)

    def ours() -> set[int]:
        """The partitions of the event topic the consumer holds now."""
        try:
            return {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic}
        except ConsumerNotStarted:  # the first ticks of a starting worker
            return set()

    async def resume_pending() -> None:
        """Seek the pending partitions that are ours to their checkpoints."""
        todo: list[int] = []
        async with resuming:
            try:
                mine = ours()
                todo = sorted(pending & mine)  # the rest: not in the consumer's assignment yet
                pending.difference_update(todo)
                if todo:
                    points = await _known_points(early[0], todo)
                    early[0] = None
                    points = await runner.resume(todo, seek_many, points)
                    log.info(
                        "resumed %d partitions from Postgres checkpoints: %s", len(points), points
                    )
                runner.metrics.partitions.set(len(mine - pending))
            except Exception:  # Postgres down, say: never crash the worker; try again later
                pending.update(todo)
                log.exception("could not resume from the checkpoints")

    # The moment Faust's rebalance ends (its recovery has sought to Kafka's committed
    # offsets and resumed the flow), not at the next tick of a timer: a failover waits for it.
    @app.task  # type: ignore[untyped-decorator]
    async def resume_after_rebalance() -> None:
        while True:
            await to_resume.wait()
            to_resume.clear()
            while app.rebalancing:  # a flag: polled, so cheaply
                if time.monotonic() - assigned_at[0] > _REBALANCE_PATIENCE_S:
                    # A recovery that never ends must not hold the partitions for ever:
                    # seek now (a seek Faust overtakes later is noticed: `Expected`).
                    log.warning("Faust's rebalance has not ended; resuming anyway")
                    break
                await asyncio.sleep(_REBALANCE_POLL_S)
            await resume_pending()

    # Seeks overtaken and version changes (a replay swap): every partition seeks again.
    @app.timer(interval=0.2)  # type: ignore[untyped-decorator]
    async def follow_checkpoints(*_: Any) -> None:  # Faust passes the app
        if app.rebalancing:  # Faust seeks to Kafka's committed offsets at its end: after it
            return
        try:
            await runner.reseek_stale(seek)
            if await runner.version_changed():
                log.info("active version changed to %s", runner.active)
                pending.update(ours())
                early[0] = None
        except Exception:  # Postgres down, say: never crash the worker; try again next tick
            log.exception("could not follow the checkpoints")
            return
        if pending:  # a version change, or a resume that failed
            await resume_pending()

    # Subscribers of a regrouped product past the writer's bound, queued by their batch:
    # recomputed here in bounded transactions, between the agent's batches (issue 19, 5).
    @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
    async def settle_regroups(*_: Any) -> None:
        try:
            if n := await runner.settle():
                log.info("recomputed %d subscribers of regrouped products", n)
        except Exception:  # a writer bug on a subscriber: logged, tried again next tick
            log.exception("recomputing the subscribers of a regrouped product failed")

    if membership is not None:
        _watch_members(app, membership)

    if settings.worker_metrics_port is not None:
        _serve_metrics(app, settings, runner, pool, settings.worker_metrics_port)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_pool(sender: Any, **_: Any) -> None:
        # SIGTERM: the consumer has stopped fetching; the batch in flight commits (with its
        # checkpoint) before the pool closes, and no new batch starts.
        await runner.drain(settings.drain_timeout_s)
        await pool.close()
        await keyring.stop()

    del fold, resume_from_checkpoints, resume_after_rebalance, follow_checkpoints, close_pool
    return app


def _member_id(app: faust.App) -> str:
    """The Kafka member id our consumer joined as (aiokafka's coordinator knows it; Faust
    does not say)."""
    consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
    return str(consumer._coordinator.member_id)


def _watch_members(app: faust.App, membership: Membership) -> None:
    # No close at shutdown: the consumer leaves the group after the app's shutdown signals
    # (`transport`), and our lock must outlive that, or a survivor would remove the member
    # while its coordinator still heartbeats (which then rejoins). The lock goes with the
    # process; a survivor then finds the row of a member already gone and drops it.
    @app.task  # type: ignore[untyped-decorator]
    async def watch_members() -> None:
        await membership.watch()

    del watch_members


def _serve_metrics(
    app: faust.App,
    settings: Settings,
    runner: BatchRunner,
    pool: AsyncConnectionPool,
    port: int,
) -> None:
    """The worker's /metrics, /livez, /readyz, and the gauges read every second."""

    @app.task  # type: ignore[untyped-decorator]
    async def serve_metrics() -> None:
        await health.serve(runner, port, settings.metrics_host)

    gauges = FoldGauges(
        settings.topic,
        pool,
        runner.metrics,
        runner.heads,
        HeadReader(settings, settings.topic),
    )

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def refresh_gauges(*_: Any) -> None:
        try:
            try:
                assigned = app.consumer.assignment()
            except ConsumerNotStarted:  # the first ticks of a starting worker
                return
            tps = [tp for tp in assigned if tp.topic == settings.topic]
            ends = await app.consumer.highwaters(*tps) if tps else {}
            await gauges.refresh({tp.partition: end for tp, end in ends.items()})
        except Exception:  # a gauge is not worth a crash; next tick tries again
            log.warning("could not refresh the lag and dead-letter gauges", exc_info=True)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_reader(sender: Any, **_: Any) -> None:
        await gauges.reader.close()

    del serve_metrics, refresh_gauges, close_reader


async def _read_points(runner: BatchRunner, partitions: list[int]) -> dict[int, int] | None:
    """The checkpoints of `partitions`; None when Postgres cannot say now."""
    try:
        return await runner.resume_points(partitions) if partitions else {}
    except Exception:  # Postgres away: the resume reads them again (and reports it)
        return None


async def _known_points(
    early: asyncio.Future[dict[int, int] | None] | None, partitions: list[int]
) -> dict[int, int] | None:
    """The checkpoints read at the assignment, if they cover `partitions` (None: read again)."""
    points = None if early is None else await early
    return points if points is not None and set(partitions) <= points.keys() else None
