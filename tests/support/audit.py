"""`audit`: read the whole log and the projection tables and return the figures of the
invariants of docs/architecture.md (lost, doubled, missing offsets, checkpoints, replay
differences)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from entitled.settings import Settings
from entitled.topics import end_offsets
from launcher.services._process import run_async
from processors.replay import replay
from projections.schema import MIRROR_TABLES
from tests.support.db import active_schema, query
from tests.support.kafka import log_records


@dataclass
class Audit:
    log_records: int = 0
    distinct_in_log: int = 0
    acked: int = 0
    acked_not_in_log: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acked, never applied nor dead-lettered
    doubled: int = 0  # processed rows beyond one per id
    offsets_missing: list[tuple[int, int]] = field(default_factory=list)
    # records of a key write that failed (their webhooks were refused and sent again): no
    # reader can open them, and `lost` says whether the events they held were applied
    orphans: int = 0
    processed_rows: int = 0
    dead_letters: int = 0
    checkpoint_gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    differing_customers: int = 0
    differences_sample: list[dict[str, Any]] = field(default_factory=list)
    tables_unequal: list[str] = field(default_factory=list)
    replay_schema: str = ""

    @property
    def problems(self) -> list[str]:
        out = []
        if self.acked_not_in_log:
            out.append(f"{len(self.acked_not_in_log)} ids answered 200 are not in the log")
        if self.lost:
            out.append(f"{len(self.lost)} acked events lost, e.g. {self.lost[:5]}")
        if self.doubled:
            out.append(f"{self.doubled} events applied twice")
        if self.offsets_missing:
            out.append(f"{len(self.offsets_missing)} log offsets neither applied nor parked")
        if self.checkpoint_gaps:
            out.append(f"checkpoints differ from log ends: {self.checkpoint_gaps}")
        if self.differing_customers:
            out.append(
                f"{self.differing_customers} customers differ from a fresh replay: "
                f"{self.differences_sample}"
            )
        if self.tables_unequal:
            out.append(f"mirrored tables differ from a fresh replay: {self.tables_unequal}")
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "log_records": self.log_records,
            "distinct_events_in_log": self.distinct_in_log,
            "acked": self.acked,
            "acked_not_in_log": len(self.acked_not_in_log),
            "lost": len(self.lost),
            "doubled": self.doubled,
            "offsets_missing": len(self.offsets_missing),
            "orphans": self.orphans,
            "processed_rows": self.processed_rows,
            "dead_letters": self.dead_letters,
            "checkpoint_gaps": len(self.checkpoint_gaps),
            "differing_customers": self.differing_customers,
            "tables_unequal": self.tables_unequal,
        }


def audit(settings: Settings, acked: set[str] | Mapping[str, Any]) -> Audit:
    """Check the invariants of docs/architecture.md over the whole log and the live version; call it
    once the workers have caught up."""
    a = Audit(acked=len(acked))
    records = log_records(settings)
    a.log_records = len(records)
    in_log = {r.event_id for r in records}
    a.distinct_in_log = len(in_log - {None})
    a.acked_not_in_log = sorted(set(acked) - in_log)
    schema = active_schema(settings)
    processed = dict(
        (eid, (p, o))
        for eid, p, o in query(
            settings, f'SELECT event_id, partition, "offset" FROM {schema}.processed_events'
        )
    )
    a.processed_rows = int(query(settings, f"SELECT count(*) FROM {schema}.processed_events")[0][0])
    a.doubled = a.processed_rows - len(processed)
    dead = {
        (p, o): eid
        for p, o, eid in query(
            settings, f'SELECT partition, "offset", event_id FROM {schema}.dead_letters'
        )
    }
    a.dead_letters = len(dead)
    dead_ids = set(dead.values())
    a.orphans = sum(1 for r in records if r.orphan)
    a.offsets_missing = [
        (r.partition, r.offset)
        for r in records
        if not r.orphan and r.event_id not in processed and (r.partition, r.offset) not in dead
    ]
    # An applied row must point at a record of the log holding that event.
    by_position = {(r.partition, r.offset): r.event_id for r in records}
    a.doubled += sum(1 for eid, pos in processed.items() if by_position.get(pos) != eid)
    a.lost = sorted(e for e in acked if e not in processed and e not in dead_ids)
    ends = run_async(lambda: end_offsets(settings))
    cps = dict(
        query(
            settings,
            f"SELECT partition, next_offset FROM {schema}.checkpoints WHERE topic = %s",
            settings.topic,
        )
    )
    a.checkpoint_gaps = {p: (cps.get(p, 0), e) for p, e in ends.items() if cps.get(p, 0) != e}
    report = run_async(lambda: replay(settings, dry_run=True, progress=False))
    a.replay_schema = report.schema
    a.differing_customers = report.differing
    a.differences_sample = report.differences[:5]
    for table in (*MIRROR_TABLES, "customer_entitlements"):
        key = "customer" if table == "customer_entitlements" else "id"
        cols = "customer, groups, movie_ids" if key == "customer" else "id, record, v_created"
        live = query(settings, f"SELECT {cols} FROM {schema}.{table} ORDER BY {key}")
        fresh = query(settings, f"SELECT {cols} FROM {report.schema}.{table} ORDER BY {key}")
        if live != fresh:
            a.tables_unequal.append(f"{table} ({len(live)} live rows, {len(fresh)} fresh)")
    return a
