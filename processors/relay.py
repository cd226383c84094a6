"""The relay: publishes the change feed (`entitled.changes`) to the Kafka topic of changes.

Rows are read in id order (the order their transactions committed), sent with the customer as
key (so one customer's changes stay in order in one partition) through an idempotent acks=all
producer, and marked published only after the broker acknowledged every one of them. A relay
killed between the ack and the mark publishes those rows again on restart, with the same ids:
consumers dedupe on the change id; nothing is ever lost.

Several relays may run: a session-level advisory lock makes one of them the publisher and the
others standbys that take over when its session ends (a standby tries the lock every
`poll_s / 2`, so leadership moves within a second of a relay's death). Postgres NOTIFY wakes
the publisher at once; a poll every second covers a missed notification.

`stop()` (SIGTERM) lets the batch in flight be acknowledged and marked, then releases the
lock before the producer closes: a standby takes over at its next try. A relay that fails
keeps the lock until its producer has stopped (sends of an unmarked batch may still be in
flight) and its session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from entitled.kafka import client_options
from entitled.settings import Settings
from entitled.topics import ensure_changes_topic
from projections import changes

__all__ = ["Relay", "RelayMetrics", "change_document"]

log = logging.getLogger(__name__)

_LEADER_LOCK = "entitled.relay"


def change_document(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON a change is published as (the same shape as the HTTP feed's)."""

    def side(before: list[str], after: list[str]) -> dict[str, list[str]]:
        return {
            "before": list(before),
            "after": list(after),
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
        }

    created: datetime = row["created_at"]
    return {
        "id": row["id"],
        "customer": row["customer"],
        "groups": side(row["groups_before"], row["groups_after"]),
        "movies": side(row["movies_before"], row["movies_after"]),
        "cause": row["cause"],
        "event_id": row["event_id"],
        "event_created": row["event_created"],
        "version": row["version"],
        "created_at": created.isoformat(),
    }


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.published = Counter(
            "entitled_relay_published_changes",
            "Change rows published to Kafka (a row published twice after a crash counts twice).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "entitled_relay_pending_changes",
            "Change rows not yet published.",
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "entitled_relay_lag_seconds",
            "Age of the oldest change row not yet published.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "entitled_relay_leader",
            "1 while this relay is the one publishing (the others stand by).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Relay:
    def __init__(self, settings: Settings, *, batch: int = 500, poll_s: float = 1.0) -> None:
        assert settings.database_url and settings.kafka_bootstrap_servers
        self.settings = settings
        self.batch = batch
        self.poll_s = poll_s
        self.metrics = RelayMetrics()
        self.stalled: str | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def ready(self) -> bool:
        return self.stalled is None and not self._stopping.is_set()

    def stop(self) -> None:
        """End `run` after the batch in flight is published and marked."""
        self._stopping.set()
        self._wake.set()

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    async def run(self) -> None:
        """Publish until cancelled; reconnects to Postgres and Kafka after failures."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres or Kafka away: wait, try again
                self.stalled = f"{type(exc).__name__}: {exc}"
                self.metrics.leader.set(0)
                log.warning("relay: %s; retrying in %.1fs", self.stalled, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)
        self.metrics.leader.set(0)

    async def _run_once(self) -> None:
        s = self.settings
        assert s.database_url
        async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as conn:
            while not await changes.try_lock(conn, _LEADER_LOCK):
                self.stalled = None
                self.metrics.leader.set(0)
                # another relay publishes; stand by
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_s / 2)
                if self._stopping.is_set():
                    return
            self.metrics.leader.set(1)
            log.info("relay: publishing (this relay holds the leader lock)")
            await ensure_changes_topic(s)
            producer = AIOKafkaProducer(
                **client_options(s),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
            )
            await producer.start()
            listener = asyncio.create_task(self._listen())
            try:
                await self._publish_loop(conn, producer)
                # Stopping: every row sent was acknowledged and marked. Hand the lead over
                # now, not after the producer's close (seconds under load: the SIGTERM
                # hand-over waited for it).
                await changes.unlock(conn, _LEADER_LOCK)
                self.metrics.leader.set(0)
                log.info("relay: stopping; leader lock released")
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                await producer.stop()

    async def _publish_loop(self, conn: psycopg.AsyncConnection[Any], producer: Any) -> None:
        while not self._stopping.is_set():
            rows = await changes.unpublished(conn, limit=self.batch)
            if rows:
                sends = [
                    await producer.send(
                        self.settings.changes_topic,
                        value=orjson.dumps(change_document(r)),
                        key=r["customer"].encode(),
                        headers=[("change-id", str(r["id"]).encode())],
                    )
                    for r in rows
                ]
                await asyncio.gather(*sends)  # every ack before any mark
                await changes.mark_published(conn, [r["id"] for r in rows])
                self.metrics.published.inc(len(rows))
            count, age = await changes.pending(conn)
            self.metrics.pending.set(count)
            self.metrics.lag_seconds.set(age)
            self.stalled = None
            if len(rows) < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _listen(self) -> None:
        """Set the wake-up event on every NOTIFY of new changes (a latency shortcut)."""
        assert self.settings.database_url
        async with await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True
        ) as conn:
            await changes.listen(conn)
            async for _ in conn.notifies():
                self._wake.set()
