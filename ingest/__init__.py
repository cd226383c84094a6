"""Ingest stage: verify Stripe webhooks and write them byte for byte to the event log; read
the Stripe API into the same log, never into Postgres.

Webhooks: `app`, `verify` (signatures), `keys` (message key and headers), `producer` (the
idempotent Kafka producer). From the Stripe API (`stripe_api`, `snapshots`): `backfill/`,
`reconcile`, `hydrate/` (complete thin or partial events; `completion` says which), `refresh/`
(on demand), `features` and `summary` (Stripe Entitlements). It imports no other stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = [
    "EventProducer",
    "IngestError",
    "LogUnavailable",
    "create_app",
    "event_headers",
    "routing_key",
]

# Type checkers see real imports; at run time each name is imported on first use, so that
# `ingest.keys` alone does not pull in Starlette and the stripe library.
if TYPE_CHECKING:
    from ingest.app import create_app
    from ingest.errors import IngestError, LogUnavailable
    from ingest.keys import event_headers, routing_key
    from ingest.producer import EventProducer
else:
    __getattr__ = lazy_exports(
        __name__,
        {
            "EventProducer": "ingest.producer",
            "IngestError": "ingest.errors",
            "LogUnavailable": "ingest.errors",
            "create_app": "ingest.app",
            "event_headers": "ingest.keys",
            "routing_key": "ingest.keys",
        },
    )
