"""The read service: the HTTP API over the projections (search, entitlements, customers, the
catalogue, the change feed, drift, the WebFlicks page), its database readers and replicas, and
the watcher that wakes long-polls and streams. Its SQL lives in `projections`.

It may import `projections` (queries) and `ingest` (the refresh route it mounts); no stage
imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = ["create_app"]

if TYPE_CHECKING:
    from api.app import create_app
else:
    __getattr__ = lazy_exports(__name__, {"create_app": "api.app"})
