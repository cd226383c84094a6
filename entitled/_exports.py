"""Public names of a package, imported from their modules on first use (PEP 562).

A package's `__init__.py` states its public names in `__all__` without importing Faust,
Starlette or aiokafka when only one light module of it is wanted (`projections.schema`,
`ingest.keys`), and without slowing the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports each name of `homes` (name -> module) on first use."""

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return __getattr__
