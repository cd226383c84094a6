"""Drift between Stripe's active entitlement summary and our derivation from features.

For each customer, our side is the lookup keys of the features of the (not deleted) products
on the items (quantity > 0) of their subscriptions in an entitling status; Stripe's side is
the lookup keys of their folded summary. A customer drifts when the two differ and neither
side changed for `grace_s` seconds (Stripe's summary lags a subscription change: a fresh
difference is not drift yet). The time of a side is Stripe's `created` of the newest snapshot
it was built from (summary, subscriptions, product features).

Nothing is compared while no product's features are mirrored at all (no API key: backfill and
reconcile never listed them), since our side would then be empty for everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from projections import schema as db

__all__ = ["Drift", "drifting"]


@dataclass(frozen=True)
class Drift:
    customer: str
    only_ours: tuple[str, ...]  # keys our derivation grants that Stripe's summary lacks
    only_stripe: tuple[str, ...]  # keys Stripe's summary has that our derivation does not
    since: int  # Unix seconds: the newest change of either side

    def as_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "only_ours": list(self.only_ours),
            "only_stripe": list(self.only_stripe),
            "since": self.since,
        }


_DRIFT = f"""
WITH ours AS (
    SELECT s.customer, k.key, max(greatest(s.v_created, f.v_created)) AS at
    FROM {db.LIVE}.subscriptions s
    CROSS JOIN LATERAL jsonb_array_elements(s.record->'items') AS i(item)
    JOIN {db.LIVE}.product_features f ON f.id = i.item->>'product'
    CROSS JOIN LATERAL jsonb_array_elements_text(f.record->'lookup_keys') AS k(key)
    LEFT JOIN {db.LIVE}.products p ON p.id = f.id
    WHERE s.customer IS NOT NULL
      AND s.record->>'status' = ANY(%(statuses)s)
      AND coalesce((i.item->>'quantity')::bigint, 1) > 0
      AND coalesce((p.record->>'deleted')::boolean, false) = false
    GROUP BY s.customer, k.key
),
theirs AS (
    SELECT e.customer, k.key
    FROM {db.LIVE}.entitlement_summaries e
    CROSS JOIN LATERAL jsonb_array_elements_text(e.record->'lookup_keys') AS k(key)
    WHERE e.customer IS NOT NULL
),
diff AS (
    SELECT coalesce(o.customer, t.customer) AS customer,
           array_agg(o.key ORDER BY o.key) FILTER (WHERE t.key IS NULL) AS only_ours,
           array_agg(t.key ORDER BY t.key) FILTER (WHERE o.key IS NULL) AS only_stripe
    FROM ours o FULL JOIN theirs t ON o.customer = t.customer AND o.key = t.key
    GROUP BY 1
),
touched AS (
    SELECT customer, max(at) AS at FROM (
        SELECT customer, v_created AS at FROM {db.LIVE}.entitlement_summaries
        UNION ALL SELECT customer, v_created FROM {db.LIVE}.subscriptions
        UNION ALL SELECT customer, at FROM ours
    ) x WHERE customer IS NOT NULL GROUP BY customer
)
SELECT d.customer, coalesce(d.only_ours, '{{}}'), coalesce(d.only_stripe, '{{}}'), t.at
FROM diff d JOIN touched t USING (customer)
WHERE (d.only_ours IS NOT NULL OR d.only_stripe IS NOT NULL)
  AND t.at <= %(cutoff)s
  AND EXISTS (SELECT 1 FROM {db.LIVE}.product_features)
  AND NOT EXISTS (
      SELECT 1 FROM {db.LIVE}.customers c
      WHERE c.id = d.customer AND coalesce((c.record->>'deleted')::boolean, false)
  )
ORDER BY d.customer
LIMIT %(limit)s
"""


async def drifting(
    conn: AsyncConnection[Any],
    *,
    statuses: tuple[str, ...],
    grace_s: float,
    limit: int = 1000,
    now: float | None = None,
) -> list[Drift]:
    """The customers whose summary and derivation have differed for over `grace_s`."""
    cutoff = int((time.time() if now is None else now) - grace_s)
    cur = await conn.execute(_DRIFT, {"statuses": list(statuses), "cutoff": cutoff, "limit": limit})
    return [
        Drift(str(c), tuple(ours), tuple(theirs), int(at))
        for c, ours, theirs, at in await cur.fetchall()
    ]
