"""The plan of a batch: what the writer will write, decided without I/O.

`ProjectionStore.apply` is load -> plan -> write. The plan takes the records that continue
from the checkpoints, what the dead letters hold back (`Held`), and the stored rows the
events touch, and returns everything the transaction writes: the changed rows, the events
applied (for dedup), the poison and parked letters, and the counts. Parsing comes first
(`Batch`), because the rows to load are named by the parsed events (`Batch.targets`).

A rule that raises poisons its event and parks the rest of that customer's events; folding is
pure and cheap, so the batch is simply folded again without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from entitled import bodies
from projections.errors import EventParseError, FoldError
from projections.model.events import StripeEvent, parse
from projections.model.fold import FoldResult, Key, fold_batch, target
from projections.model.rows import Row
from projections.types import Message, Position

__all__ = ["Batch", "Held", "Letter", "Plan", "id_and_type", "letters"]

# (message, event id, event type, error or None)
Letter = tuple[Message, str | None, str | None, BaseException | None]


@dataclass
class Held:
    """What the dead letters hold back of a batch."""

    parked_from: dict[str, int] = field(default_factory=dict)  # key -> first parked offset
    skipped: set[Position] = field(default_factory=set)

    def park(self, key: str | None, offset: int) -> None:
        k = key or ""
        self.parked_from[k] = min(self.parked_from.get(k, offset), offset)

    def is_parked(self, key: str | None, offset: int) -> bool:
        start = self.parked_from.get(key or "")
        return start is not None and offset >= start


@dataclass
class Plan:
    """What one transaction writes for a batch (besides checkpoints and entitlements)."""

    before: Mapping[Key, Row]  # the stored rows the fold read (what changed rows were)
    folded: FoldResult
    applied: list[tuple[str, int, int]]  # (event id, partition, offset), each id once
    poison: list[Letter]
    parked: list[Letter]
    skipped: int  # events an operator skipped (`deadletters skip`)
    duplicates: int  # live events not applied (already applied, or twice in the batch)
    forgotten: int = 0  # records whose data key was deleted (erasure): passed unread
    orphans: int = 0  # records whose data key never reached the keys topic: passed unread

    def counts(self) -> dict[str, object]:
        """The `ApplyResult` fields this plan decides."""
        f = self.folded
        return {
            "applied": len(f.applied),
            "duplicates": self.duplicates,
            "parked": len(self.parked),
            "poison": len(self.poison),
            "skipped": self.skipped,
            "forgotten": self.forgotten,
            "orphans": self.orphans,
            "unknown": f.unknown,
            "ties": f.ties,
        }


@dataclass
class Batch:
    """The parsed records of a batch, before the stored rows are known."""

    messages: Sequence[Message]
    held: Held
    events: list[StripeEvent] = field(default_factory=list)
    poison: list[Letter] = field(default_factory=list)
    skipped: int = 0
    forgotten: int = 0
    orphans: int = 0

    @classmethod
    def parse(cls, messages: Sequence[Message], held: Held) -> Batch:
        """Parse `messages` (log order per partition); a record that is not a Stripe event
        is poison and parks its key. Skipped positions are dropped, and so are forgotten
        records (their data key is gone: never a dead letter, never parking anyone)."""
        out = cls(messages, held)
        for m in messages:
            if m.forgotten:
                out.forgotten += 1
                continue
            if m.orphan:
                out.orphans += 1
                continue
            if m.position in held.skipped:
                out.skipped += 1
                continue
            try:
                out.events.append(parse(m.value, partition=m.partition, offset=m.offset, key=m.key))
            except EventParseError as exc:
                out.poison.append((m, *id_and_type(m.value), exc))
                held.park(m.key, m.offset)
        return out

    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    def targets(self) -> dict[str, list[str]]:
        """table -> ids of the stored rows the events write (to load before `plan`)."""
        wanted: dict[str, set[str]] = {}
        for e in self.events:
            t = target(e)
            if t is not None:
                wanted.setdefault(t[0], set()).add(t[1])
        return {table: sorted(ids) for table, ids in wanted.items()}

    def plan(self, current: Mapping[Key, Row], seen: Set[str]) -> Plan:
        """Fold the events over `current` (`seen`: ids applied before), isolating poison."""
        held, poison = self.held, list(self.poison)
        by_position = {m.position: m for m in self.messages}
        while True:
            live = [e for e in self.events if not held.is_parked(e.key, e.offset)]
            try:
                folded = fold_batch(live, current, seen)
                break
            except FoldError as exc:
                bad = exc.event
                message = by_position[(bad.partition, bad.offset)]
                poison.append((message, bad.id, bad.type, exc.__cause__ or exc))
                held.park(bad.key, bad.offset)
        poisoned = {m.position for m, *_ in poison}
        parked: list[Letter] = [
            (by_position[(e.partition, e.offset)], e.id, e.type, None)
            for e in self.events
            if held.is_parked(e.key, e.offset) and (e.partition, e.offset) not in poisoned
        ]
        applied = set(folded.applied)
        first: dict[str, StripeEvent] = {}  # an id twice in the batch is applied once
        for e in live:
            if e.id in applied:
                first.setdefault(e.id, e)
        return Plan(
            current,
            folded,
            [(e.id, e.partition, e.offset) for e in first.values()],
            poison,
            parked,
            self.skipped,
            len(live) - len(folded.applied),
            self.forgotten,
            self.orphans,
        )


def id_and_type(raw: bytes) -> tuple[str | None, str | None]:
    """Best effort: the id and type of a record that may not be a valid Stripe event."""
    try:
        doc = bodies.loads(raw)
    except bodies.UnreadableBody:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, kind = doc.get("id"), doc.get("type")
    return (ident if isinstance(ident, str) else None, kind if isinstance(kind, str) else None)


def letters(messages: Iterable[Message]) -> list[Letter]:
    """Letters for `messages` with no id, type or error (an audit trail of a release)."""
    return [(m, None, None, None) for m in messages]
