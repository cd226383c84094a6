"""Projections stage: the Postgres schema and all SQL, over the pure model (`model/`: event
views, rules, fold, entitlements). It never consumes Kafka; the read HTTP service over it is
the `api` package.

Modules: `schema` (version schemas, migrate), `versions` (create, swap, compare, drop), the
writer `store` over `offsets`, `upserts`, `recompute`, `changes` and `deadletters`; the read
queries `search`, `feed`, `catalog`, `drift`, `replication`; `cli` (`migrate`, `catalog`).
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
