"""`GET /v1/drift`: customers whose Stripe summary and our feature derivation disagree.

`?grace=<s>` overrides the grace period (ENTITLED_DRIFT_GRACE_S, default 300 s) and `limit`
caps the answer. Each entry says which side has what: `only_ours` (our derivation grants
these lookup keys, Stripe's summary lacks them) and `only_stripe` (the reverse).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from projections import api_params, drift
from projections.api_http import json_response, readers
from projections.readers import Target

__all__ = ["drifting"]


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
