"""Prometheus metrics of one worker (or replay) process, in its own `CollectorRegistry`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from projections.store import ApplyResult

__all__ = ["CONTENT_TYPE", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TXN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 5000)


class WorkerMetrics:
    """What the fold did, what it could not do, and whether it is stuck."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "entitled_worker_events",
            "Records by outcome: applied, duplicate, below_checkpoint, parked, poison, skipped,"
            " unknown (no rule for the type), forgotten (data key deleted), orphan (data key"
            " never written: its write failed and the event was written again).",
            ["outcome"],
            registry=r,
        )
        self.ignored = Counter(
            "entitled_worker_ignored_events",
            "Events that describe no stored state (previews, objects without id), by type.",
            ["type"],
            registry=r,
        )
        self.ties = Counter(
            "entitled_worker_log_order_ties",
            "Same-second snapshots of one object that only log order could order.",
            registry=r,
        )
        self.retries = Counter(
            "entitled_worker_retries",
            "Batches retried after a transient failure, by error class.",
            ["error"],
            registry=r,
        )
        self.isolations = Counter(
            "entitled_worker_isolations",
            "Batches split to isolate an event that fails deterministically.",
            registry=r,
        )
        self.stalled = Gauge(
            "entitled_worker_stalled",
            "1 while every event fails the same way (a writer bug): folding has stopped.",
            registry=r,
        )
        self.partitions = Gauge(
            "entitled_worker_partitions",
            "Partitions of the event topic this worker folds (assigned and resumed from their"
            " checkpoints).",
            registry=r,
        )
        self.batch_size = Histogram(
            "entitled_worker_batch_size", "Records per batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.txn_seconds = Histogram(
            "entitled_worker_transaction_seconds",
            "Time to commit one batch (all attempts).",
            buckets=_TXN_BUCKETS,
            registry=r,
        )

        self.lag_events = Gauge(
            "entitled_worker_lag_events",
            "Records of each partition this worker owns not folded yet (log end - checkpoint).",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "entitled_worker_lag_seconds",
            "Age of the oldest record not folded yet, from its received-at header (0: caught"
            " up), per partition this worker owns.",
            ["partition"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "entitled_worker_dead_letters",
            "Open dead letters of the active version by state: poison events and the events"
            " parked behind them.",
            ["state"],
            registry=r,
        )
        self.parked_customers = Gauge(
            "entitled_worker_parked_customers",
            "Customers held back by a poison event (their later events are parked).",
            registry=r,
        )
        self.regroup_queue = Gauge(
            "entitled_worker_regroup_queue",
            "Subscribers of regrouped products waiting to be recomputed (past"
            " ENTITLED_REGROUP_CHUNK a regroup queues them; the workers drain them a chunk per"
            " transaction).",
            registry=r,
        )
        self.regroup_queue_age = Gauge(
            "entitled_worker_regroup_queue_age_seconds",
            "How long the oldest queued subscriber has waited (0: none waits).",
            registry=r,
        )
        for state in ("poison", "parked"):
            self.dead_letters.labels(state).set(0)
        self._partitions: set[int] = set()

    def set_lag(self, lag: dict[int, tuple[int, float]]) -> None:
        """Lag per owned partition: (events, seconds); partitions no longer owned vanish (the
        worker that owns them now reports them)."""
        for p in self._partitions - lag.keys():
            self.lag_events.remove(str(p))
            self.lag_seconds.remove(str(p))
        for p, (events, seconds) in lag.items():
            self.lag_events.labels(str(p)).set(events)
            self.lag_seconds.labels(str(p)).set(seconds)
        self._partitions = set(lag)

    def count(self, result: ApplyResult) -> None:
        for outcome, n in (
            ("applied", result.applied),
            ("duplicate", result.duplicates),
            ("below_checkpoint", result.below_checkpoint),
            ("parked", result.parked),
            ("poison", result.poison),
            ("skipped", result.skipped),
            ("unknown", result.unknown),
            ("forgotten", result.forgotten),
            ("orphan", result.orphans),
        ):
            if n:
                self.events.labels(outcome).inc(n)
        for event_type, n in result.ignored.items():
            self.ignored.labels(event_type).inc(n)
        if result.ties:
            self.ties.inc(result.ties)

    def render(self) -> bytes:
        return generate_latest(self.registry)
