"""Prometheus metrics of one ingest app, in its own `CollectorRegistry`.

A per-app registry (not the global default) lets several apps live in one process, as they
do in the tests, without "duplicated timeseries" errors.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.producer import EventProducer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Produce latency buckets around what an acks=all write on a healthy broker takes (ms) and
# up to the 5 s default produce timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """Requests by outcome, produce latency, bytes written, late producer outcomes."""

    def __init__(self, producer: EventProducer | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "entitled_ingest_requests",
            "Webhook requests by outcome (accepted, accepted_malformed: signed but not a "
            "well-formed event, logged as received; bad_signature, malformed, too_large, "
            "unavailable, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.produce_latency = Histogram(
            "entitled_ingest_produce_seconds",
            "Time from handing an event to the producer to the broker's ack.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes = Counter(
            "entitled_ingest_bytes",
            "Bytes of webhook bodies written to the log.",
            registry=self.registry,
        )
        if producer is not None:
            self.registry.register(_LateOutcomes(producer))

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


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
