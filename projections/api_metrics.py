"""Prometheus metrics of one read API app, in its own `CollectorRegistry`.

A per-app registry lets several apps live in one process (as in the tests) without
"duplicated timeseries" errors. Pool figures are read from `pool.get_stats()` at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

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
        self.registry.register(_PoolCollector(pool))
        self.streams = Gauge(
            "entitled_api_change_streams",
            "Open Server-Sent Events streams of the change feed (/v1/changes/stream).",
            registry=self.registry,
        )
        self.waiting = Gauge(
            "entitled_api_waiting_requests",
            "Requests waiting for news: long-polls of /v1/changes, reads with min_event.",
            ["kind"],
            registry=self.registry,
        )
        self.min_events = Counter(
            "entitled_api_min_event_reads",
            "Reads with min_event, by outcome (folded, not_yet_folded, parked).",
            ["outcome"],
            registry=self.registry,
        )

    def min_event(self, outcome: str) -> None:
        self.min_events.labels(outcome).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
