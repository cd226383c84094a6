"""The launcher on top of the stages: the `entitled` command, `entitled dev`, the demo, the local
Kafka and PostgreSQL, and the Stripe event factory. No stage imports it.

Modules: `cli` (the `entitled` command: each stage contributes its commands; the local
services a stage command needs are resolved here), `dev` and `_children` (`entitled dev`),
`demo` (demo customers and catalogue), `services` (the local Kafka and PostgreSQL),
`stripe/` with `stripe_fixtures/` (signed Stripe events for tests, demo and bench),
`workload` (a realistic event stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = ["ServicesError", "Workload", "main"]

# Type checkers see real imports (and so catch a misspelt name); at run time each name is
# imported on first use.
if TYPE_CHECKING:
    from launcher.cli import main
    from launcher.services import ServicesError
    from launcher.workload import Workload
else:
    __getattr__ = lazy_exports(
        __name__,
        {
            "ServicesError": "launcher.services",
            "Workload": "launcher.workload",
            "main": "launcher.cli",
        },
    )
