"""Moved to `tests.support` (load, audit, kafka, db, system); this name stays importable
until every test uses them. `start_system` here answers the old dict of the typed
`tests.support.system.System`."""

from __future__ import annotations

from typing import Any

from tests.support import system as _system
from tests.support.audit import Audit, audit
from tests.support.db import active_schema, caught_up, processed_count
from tests.support.db import query as sql_rows
from tests.support.kafka import Record, log_records
from tests.support.load import Poster, SearchLoop
from tests.support.processes import Procs
from tests.support.system import DEMO_CATALOG, ready, signed

__all__ = [
    "DEMO_CATALOG",
    "Audit",
    "Poster",
    "Record",
    "SearchLoop",
    "active_schema",
    "audit",
    "caught_up",
    "log_records",
    "processed_count",
    "ready",
    "signed",
    "sql_rows",
    "start_system",
]


def start_system(
    procs: Procs, *, ingests: int = 1, workers: int = 1, api: bool = True, **env: str
) -> dict[str, Any]:
    s = _system.start_system(procs, ingests=ingests, workers=workers, api=api, **env)
    out: dict[str, Any] = {
        "ingest": s.ingests,
        "ingest_urls": s.ingest_urls,
        "workers": s.workers,
        "env": s.env,
    }
    if api:
        out["api"], out["api_url"] = s.api, s.api_url
    return out
