"""Prometheus metrics of one ingest app, in its own `CollectorRegistry`.

A per-app registry (not the global default) lets several apps live in one process, as they
do in the tests, without "duplicated timeseries" errors.

What a webhook updates (its outcome, its bytes, its produce latency) is kept as plain numbers
and read by a collector when scraped: prometheus_client's `Counter` and `Histogram` take a
lock at each update (for threads; all of ingest runs on the event loop's), and the three
updates of a webhook cost ~5-9 us of its CPU. The exposition is the same but for the
`_created` samples.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ingest.producer import EventProducer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Produce latency buckets around what an acks=all write on a healthy broker takes (ms) and
# up to the 5 s default produce timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# their `le` labels as prometheus_client's Histogram writes them, +Inf last
_LE: tuple[str, ...] = tuple(
    floatToGoString(b)  # type: ignore[no-untyped-call]
    for b in (*_LATENCY_BUCKETS, float("inf"))
)


class IngestMetrics:
    """Requests by outcome, produce latency, bytes written, late producer outcomes."""

    def __init__(self, producer: EventProducer | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # outcome: accepted, accepted_malformed, bad_signature, malformed, too_large,
        # unavailable, error, disconnected
        self.requests: Counter[str] = Counter()
        self.bytes = 0
        # requests per latency bucket (each bound inclusive, as Prometheus's `le`), +Inf last
        self.latency = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.registry.register(_Webhooks(self))
        if producer is not None:
            self.registry.register(_LateOutcomes(producer))

    def produced(self, seconds: float) -> None:
        """One event's time from the producer to the broker's ack."""
        self.latency[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _Webhooks(Collector):
    """The numbers `IngestMetrics` keeps, as the Counter and Histogram they stand for."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        requests = CounterMetricFamily(
            "entitled_ingest_requests",
            "Webhook requests by outcome (accepted, accepted_malformed: signed but not a "
            "well-formed event, logged as received; bad_signature, malformed, too_large, "
            "unavailable, error).",
            labels=["outcome"],
        )
        for outcome, count in m.requests.items():
            requests.add_metric([outcome], count)
        yield requests
        cumulative, buckets = 0, []
        for le, count in zip(_LE, m.latency, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        yield HistogramMetricFamily(
            "entitled_ingest_produce_seconds",
            "Time from handing an event to the producer to the broker's ack.",
            buckets=buckets,
            sum_value=m.latency_sum,
        )
        yield CounterMetricFamily(
            "entitled_ingest_bytes", "Bytes of webhook bodies written to the log.", value=m.bytes
        )


class _LateOutcomes(Collector):
    """Writes we answered 503 for whose fate became known afterwards (see ingest.producer)."""

    def __init__(self, producer: EventProducer) -> None:
        self._producer = producer

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "entitled_ingest_late_outcomes",
            "Writes answered 503 that the broker later acknowledged or finally failed.",
            labels=["result"],
        )
        family.add_metric(["acked"], self._producer.late_acks)
        family.add_metric(["failed"], self._producer.late_failures)
        yield family
        keyring = self._producer.keyring
        yield CounterMetricFamily(
            "entitled_ingest_forgotten_writes",
            "Events about a forgotten customer created before the forget (a late retry),"
            " logged sealed with a key that exists nowhere: unreadable from the start.",
            value=keyring.shredded if keyring is not None else 0,
        )
