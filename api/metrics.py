"""Prometheus metrics of one read API app, in its own `CollectorRegistry`.

A per-app registry lets several apps live in one process (as in the tests) without
"duplicated timeseries" errors. Pool figures are read from `pool.get_stats()` at scrape time.

Several worker processes on one port (`api.workers`): a scrape reaches whichever worker
accepts it, so each must answer for all. prometheus_client's multiprocess mode does it (the
parent sets `PROMETHEUS_MULTIPROC_DIR`): every metric's values live in per-process files, and
`render` adds them up. What the collectors read from live objects (pool, readers, read
model) is copied into such files every second and before each scrape (`_Published`):
counters add up over the workers, gauges as `_GAUGE_MODES` says (e.g. the read model's
entries: the sum; "current": the least, so 0 while any worker is behind).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from api.readers import Readers

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A search is a few milliseconds; the tail buckets catch pool waits and slow scans.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _PoolCollector(Collector):
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        stats = self.pool.get_stats()
        gauge = GaugeMetricFamily(
            "entitled_api_pool", "psycopg pool statistics (pool.get_stats()).", labels=["stat"]
        )
        for name, value in sorted(stats.items()):
            gauge.add_metric([name], float(value))
        yield gauge


class _ReadersCollector(Collector):
    """Reads by target, and each replica's health and replay lag (`api.readers`)."""

    def __init__(self, readers: Readers) -> None:
        self.readers = readers

    def collect(self) -> Iterator[Metric]:
        reads = CounterMetricFamily(
            "entitled_api_reads",
            "Reads (search, entitlements, customers) served, by target (primary, replica-N).",
            labels=["target"],
        )
        failovers = CounterMetricFamily(
            "entitled_api_read_failovers",
            "Reads that failed on a replica and went on to the next target.",
            labels=["target"],
        )
        for t in self.readers.targets:
            reads.add_metric([t.name], float(t.reads))
            failovers.add_metric([t.name], float(t.failovers))
        yield reads
        yield failovers
        labels = ["replica", "address"]
        healthy = GaugeMetricFamily(
            "entitled_api_replica_healthy", "1 while the replica passes its check.", labels=labels
        )
        seconds = GaugeMetricFamily(
            "entitled_api_replica_lag_seconds",
            "Replay lag of the replica in seconds (0 when it replayed all it received).",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "entitled_api_replica_lag_bytes",
            "WAL bytes the replica has not replayed (from the primary's current position).",
            labels=labels,
        )
        for t in self.readers.replicas:
            key = [t.name, t.address]
            healthy.add_metric(key, 1.0 if t.healthy else 0.0)
            if t.lag_seconds is not None:
                seconds.add_metric(key, t.lag_seconds)
            if t.lag_bytes is not None:
                size.add_metric(key, float(t.lag_bytes))
        yield healthy
        yield seconds
        yield size


class _ModelCollector(Collector):
    """The read model's size and use (`api.model`), read at scrape time."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        m = self.model
        searches = CounterMetricFamily(
            "entitled_api_read_model_searches",
            "Searches by the read model, answered from memory (hit) or with a database read.",
            labels=["outcome"],
        )
        searches.add_metric(["hit"], float(m.hits))
        searches.add_metric(["miss"], float(m.misses))
        yield searches
        yield CounterMetricFamily(
            "entitled_api_read_model_checked",
            "Hits that first asked the database for its marks: the model was not current"
            " (LISTEN down, news not applied yet) or the search had min_event.",
            value=float(m.checked),
        )
        yield GaugeMetricFamily(
            "entitled_api_read_model_current",
            "1 while the read model has applied everything the database announced (it answers"
            " hits without asking the database), else 0.",
            value=1.0 if m.current() else 0.0,
        )
        yield CounterMetricFamily(
            "entitled_api_read_model_flushes",
            "Times the read model was emptied (start, version swap or rollback).",
            value=float(m.flushes),
        )
        size = GaugeMetricFamily(
            "entitled_api_read_model_entries", "Entries held by the read model.", labels=["kind"]
        )
        size.add_metric(["customers"], float(len(m.customers)))
        size.add_metric(["answers"], float(len(m.answers)))
        yield size


GaugeMode = Literal["livesum", "livemin", "livemax"]
_GAUGE_MODES: dict[str, GaugeMode] = {
    "entitled_api_replica_healthy": "livemin",  # unhealthy for one worker: 0
    "entitled_api_replica_lag_seconds": "livemax",
    "entitled_api_replica_lag_bytes": "livemax",
    "entitled_api_read_model_current": "livemin",
}  # others: livesum (pool connections, read model entries)


def multiprocess() -> bool:
    """Whether this process is one of several API workers (`api.workers`)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _Published:
    """The collectors' samples copied into prometheus_client's per-process files (module
    doc): a counter by its increase since the last copy, a gauge by its value."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = collectors
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.last: dict[tuple[str, tuple[str, ...]], float] = {}

    def publish(self) -> None:
        for collector in self.collectors:
            for family in collector.collect():
                for sample in family.samples:
                    names = tuple(sample.labels)
                    values = tuple(sample.labels.values())
                    if family.type == "counter" and sample.name.endswith("_total"):
                        counter = self.counters.get(family.name)
                        if counter is None:
                            counter = self.counters[family.name] = Counter(
                                family.name, family.documentation, names, registry=None
                            )
                        key = (family.name, values)
                        grown = sample.value - self.last.get(key, 0.0)
                        self.last[key] = sample.value
                        if grown > 0:
                            (counter.labels(*values) if names else counter).inc(grown)
                    elif family.type == "gauge":
                        gauge = self.gauges.get(family.name)
                        if gauge is None:
                            gauge = self.gauges[family.name] = Gauge(
                                family.name,
                                family.documentation,
                                names,
                                registry=None,
                                multiprocess_mode=_GAUGE_MODES.get(family.name, "livesum"),
                            )
                        (gauge.labels(*values) if names else gauge).set(sample.value)


class APIMetrics:
    """Request latency by method, route template and status; connection pool statistics;
    open change streams; `min_event` reads by outcome."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "entitled_api_request_seconds",
            "Read API request latency by route template.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency: dict[tuple[str, str, int], Histogram] = {}
        self._collectors: list[Collector] = []
        self.published = _Published(self._collectors) if multiprocess() else None
        self._register(_PoolCollector(pool))
        self.streams = Gauge(
            "entitled_api_change_streams",
            "Open Server-Sent Events streams of the change feed (/v1/changes/stream).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "entitled_api_waiting_requests",
            "Requests waiting for news: long-polls of /v1/changes, reads with min_event.",
            ["kind"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.min_events = Counter(
            "entitled_api_min_event_reads",
            "Reads with min_event, by outcome (folded, not_yet_folded, parked).",
            ["outcome"],
            registry=self.registry,
        )

    def watch_readers(self, readers: Readers) -> None:
        """Report reads by target and the replicas' lag at scrape time."""
        self._register(_ReadersCollector(readers))

    def watch_model(self, model: Any) -> None:
        self._register(_ModelCollector(model))

    def _register(self, collector: Collector) -> None:
        self._collectors.append(collector)
        if self.published is None:  # else read through the files (module doc)
            self.registry.register(collector)

    def min_event(self, outcome: str) -> None:
        self.min_events.labels(outcome).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._latency.get(key)
        if child is None:  # `labels()` takes a lock and builds its key on every call
            child = self._latency[key] = self.latency.labels(method, route, str(status))
        child.observe(seconds)

    async def publish_every(self, seconds: float = 1.0) -> None:
        """Several workers (module doc): copy the collectors' samples to the files every
        `seconds`, so that a scrape through another worker sees this one's at most that old."""
        if self.published is None:
            return
        while True:
            self.published.publish()
            await asyncio.sleep(seconds)

    def render(self) -> bytes:
        if self.published is None:
            return generate_latest(self.registry)
        self.published.publish()
        every = CollectorRegistry()
        MultiProcessCollector(every)  # type: ignore[no-untyped-call]
        return generate_latest(every)
