"""The shell on top of the three stages; no stage imports it.

Modules: `cli` (the `entitled` command: each stage contributes its commands; the local
services a stage command needs are resolved here), `dev` and `_children` (`entitled dev`),
`demo` (demo customers and catalogue), `services` (the local Kafka and PostgreSQL),
`stripe_events` with `stripe_fixtures/` (signed Stripe events for tests, demo and bench),
`workload` (a realistic event stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = ["ServicesError", "Workload", "main"]

# Type checkers see real imports (and so catch a misspelt name); at run time each name is
# imported on first use.
if TYPE_CHECKING:
    from entitled.shell.cli import main
    from entitled.shell.services import ServicesError
    from entitled.shell.workload import Workload
else:
    __getattr__ = lazy_exports(
        __name__,
        {
            "ServicesError": "entitled.shell.services",
            "Workload": "entitled.shell.workload",
            "main": "entitled.shell.cli",
        },
    )
