"""`GET /v1/drift`: customers whose Stripe summary and our feature derivation disagree.

`?grace=<s>` overrides the grace period (ENTITLED_DRIFT_GRACE_S, default 300 s) and `limit`
caps the answer. Each entry says which side has what: `only_ours` (our derivation grants
these lookup keys, Stripe's summary lacks them) and `only_stripe` (the reverse).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from prometheus_client import Gauge
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from api import params as api_params
from api.http import json_response, metrics, readers
from api.readers import Target
from projections import drift

__all__ = ["drifting", "measure"]

log = logging.getLogger(__name__)

_MEASURE_EVERY_S = 15.0  # a scrape more often than this reuses the last count
_COUNT_CAP = 100_000
_SCRAPE_WAIT_S = 1.0  # the longest a scrape waits for a connection to count the drift


async def drifting(request: Request) -> Response:
    settings = request.app.state.settings
    params = request.query_params
    grace = api_params.seconds(params.get("grace"), "grace", settings.drift_grace_s, 86400.0 * 365)
    limit = api_params.limit(params.get("limit"), 100, 1000)

    async def read(target: Target) -> list[drift.Drift]:
        async with target.connection() as conn:
            return await drift.drifting(
                conn, statuses=tuple(settings.entitling_statuses), grace_s=grace, limit=limit
            )

    found = await readers(request).run(read)
    body: dict[str, Any] = {"grace_s": grace, "drift": [d.as_json() for d in found]}
    return json_response(body)


async def measure(request: Request) -> None:
    """Refresh the `entitled_drift_customers` gauge before `/metrics` renders (at most every
    15 s); a failed count leaves the last value: metrics must render when the database
    does not answer."""
    state = request.app.state
    gauge: Gauge | None = getattr(state, "drift_gauge", None)
    if gauge is None:
        gauge = state.drift_gauge = Gauge(
            "entitled_drift_customers",
            "Customers whose Stripe entitlement summary and our derivation from features have"
            " disagreed for longer than ENTITLED_DRIFT_GRACE_S.",
            registry=metrics(request).registry,
            multiprocess_mode="livemostrecent",  # several workers: one fact of the database
        )
        state.drift_measured = 0.0
    if time.monotonic() - state.drift_measured < _MEASURE_EVERY_S:
        return
    state.drift_measured = time.monotonic()
    settings = state.settings

    async def read(target: Target) -> int:
        # not the primary's 5 s wait for a connection: a scrape answers at once while the
        # primary is down (the gauge keeps its last value), not after the scraper gave up
        async with target.pool.connection(timeout=_SCRAPE_WAIT_S) as conn:
            found = await drift.drifting(
                conn,
                statuses=tuple(settings.entitling_statuses),
                grace_s=settings.drift_grace_s,
                limit=_COUNT_CAP,
            )
            return len(found)

    try:
        # on the primary, uncounted: a scrape is not a read a client made
        gauge.set(await read(readers(request).primary))
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("drift gauge not refreshed: %s", exc)
