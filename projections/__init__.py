"""Projections stage: the Postgres schema and all SQL, the pure model (`model/`: events, rules,
fold, entitlements), the writer, search and the read queries. It never consumes Kafka; the
read HTTP service over it is the `api` package.

Modules: `schema` (version schemas, migrate), `versions` (create, swap, compare, drop),
`events` (typed views of a Stripe event), `normalise` (older API shapes to the current one),
`rules/` (one pure rule per event type), `fold` (a batch of events over the rows they touch),
`entitlements` (who may watch what), the writer and its parts, `catalog`, `search`, `cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = [
    "EventParseError",
    "FoldError",
    "Policy",
    "ProjectionError",
    "StripeEvent",
    "active_schema",
    "derive",
    "migrate",
]

# Type checkers see real imports; at run time each name is imported on first use, so that
# `from projections import schema` does not pull in Starlette.
if TYPE_CHECKING:
    from projections.errors import EventParseError, FoldError, ProjectionError
    from projections.model.entitlements import Policy, derive
    from projections.model.events import StripeEvent
    from projections.schema import active_schema, migrate
else:
    __getattr__ = lazy_exports(
        __name__,
        {
            "EventParseError": "projections.errors",
            "FoldError": "projections.errors",
            "Policy": "projections.model.entitlements",
            "ProjectionError": "projections.errors",
            "StripeEvent": "projections.model.events",
            "active_schema": "projections.schema",
            "derive": "projections.model.entitlements",
            "migrate": "projections.schema",
        },
    )
