"""Processors stage: consume the event topic and fold it into the projections.

Modules: `app` (the Faust worker: a thin agent over the batch runner), `runner` (retries,
isolation of poison, seek back on a gap), `replay` (rebuild a projection version from offset
0, then swap), `rebuild` (one customer in place), `swap_gate` (when a rebuilt version must not
be swapped in), `relay` (the change feed to Kafka), `lag` and `status`, `cli` (the `worker`,
`replay`, `deadletters` and `status` commands). No SQL here: it lives in `projections`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = ["create_app"]

# Type checkers see real imports; at run time each name is imported on first use, so that
# importing one module of the package does not start Faust.
if TYPE_CHECKING:
    from processors.app import create_app
else:
    __getattr__ = lazy_exports(__name__, {"create_app": "processors.app"})
