"""Prometheus metrics of the hydrator, in its own `CollectorRegistry` (see ingest.metrics)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.stripe_api import StripeApi


class HydratorMetrics:
    """Events by outcome; Stripe answers retried (from the API's request log)."""

    def __init__(self, api: StripeApi | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "entitled_hydrator_events",
            "Events needing completion by outcome (hydrated, gone, failed, no_state, "
            "duplicate, unhydrated: no STRIPE_API_KEY).",
            ["outcome"],
            registry=self.registry,
        )
        self.lag_events = Gauge(
            "entitled_hydrator_lag_events",
            "Records of the assigned partitions the hydrator has not read yet.",
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "entitled_hydrator_lag_seconds",
            "Age of the last record read while records wait (0 when caught up).",
            registry=self.registry,
        )
        self.partitions = Gauge(
            "entitled_hydrator_partitions",
            "Partitions of the event topic assigned to this hydrator (they move between "
            "copies as a worker's do).",
            registry=self.registry,
        )
        for outcome in ("hydrated", "unhydrated"):
            self.events.labels(outcome)  # present from the start, at 0
        if api is not None:
            self.registry.register(_Retries(api))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Retries(Collector):
    def __init__(self, api: StripeApi) -> None:
        self._api = api

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "entitled_hydrator_stripe_retries",
            "Stripe API answers retried, by cause (429, 5xx, connection).",
            labels=["cause"],
        )
        family.add_metric(["rate_limited"], self._api.log.rate_limited)
        family.add_metric(["server_error"], self._api.log.server_errors)
        family.add_metric(["connection"], self._api.log.connection_errors)
        yield family
