"""The fold rule registry: one rule per Stripe event type, registered by name.

A rule is a pure function `(event, current row or None) -> new row or None`. It builds the
row from the event's snapshot; whether that snapshot is newer than the current row is decided
once, here (`RuleSpec.resolve`, by the order documented in `projections.model.rows`), not in every
rule:

- `stamp_of(event)` places the snapshot: Stripe's `created`, the event's rank (terminal >
  update > create), the object's lifecycle stage (`projections.model.lifecycle.stage_of`), the log
  position;
- the rule is run a second time on the object as it was before the event (when the event
  carries `previous_attributes`), and the row keeps the values the event changed, so that
  same-key snapshots chain (`projections.model.settle.settle`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from projections.model.events import StripeEvent
from projections.model.lifecycle import stage_of
from projections.model.rows import TABLES, Row, Stamp, coarse, rank_of
from projections.model.settle import Settled, changes, settle
from projections.model.views import ObjectView

__all__ = [
    "RULES",
    "RuleFn",
    "RuleSpec",
    "fold",
    "row_of",
    "rule_for",
    "stamp_of",
    "supersedes",
    "view",
]

RuleFn = Callable[[StripeEvent, Any], Row | None]
F = TypeVar("F", bound=Callable[..., Row | None])
V = TypeVar("V", bound=ObjectView)
R = TypeVar("R", bound=Row)

_RULES: dict[str, RuleSpec] = {}
RULES: Mapping[str, RuleSpec] = MappingProxyType(_RULES)


def stamp_of(event: StripeEvent) -> Stamp:
    """Where `event`'s snapshot sits in its object's history (see `projections.model.rows`)."""
    return Stamp(
        event.created, rank_of(event.type), stage_of(event.obj), event.partition, event.offset
    )


def supersedes(event: StripeEvent, current: Row | None) -> bool:
    """True when `event`'s snapshot is newer than `current` by its coarse key alone (a
    same-key snapshot may still be chosen by `RuleSpec.resolve`)."""
    return current is None or coarse(stamp_of(event)) > coarse(current.stamp)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    type: str
    table: str
    fn: RuleFn

    def resolve(self, event: StripeEvent, current: Row | None) -> Settled:
        """The row to keep after `event` (None: the event is older than `current`)."""
        sticky: tuple[str, ...] = getattr(current, "STICKY", ())
        if current is not None and coarse(stamp_of(event)) < coarse(current.stamp):
            if not sticky:
                return Settled(None)  # stale: do not even build the row
            # stale, but it may name what the newer row never learnt
            older = self.fn(event, current)
            filled = _fill(current, older, sticky) if older is not None else current
            return Settled(filled if filled is not current else None)
        row = self.fn(event, current)
        if row is None:
            return Settled(None)
        if event.previous is not None:
            try:
                before = self.fn(dataclasses.replace(event, obj=event.previous), current)
            except Exception:
                before = None
            if before is not None and type(before) is type(row):
                row = dataclasses.replace(row, previous=changes(before, row))
        settled = settle(current, row)
        if sticky and settled.row is not None and current is not None:
            settled = Settled(_fill(settled.row, current, sticky), settled.tie)
        return settled

    def apply(self, event: StripeEvent, current: Row | None) -> Row | None:
        """The rule's new row, or None when the event is older than `current`."""
        return self.resolve(event, current).row


def _fill(row: Any, other: Any, sticky: tuple[str, ...]) -> Any:
    """`row` with each `sticky` field it lacks (None) taken from `other`; `row` itself when
    nothing is filled."""
    given = {name: getattr(other, name) for name in sticky if getattr(row, name) is None}
    given = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(row, **given) if given else row


def fold(*types: str, table: str, override: bool = False) -> Callable[[F], F]:
    """Register the decorated rule for each event type in `types`, writing to `table`.

    `override=True` replaces a registered rule: how a rule plugin (ENTITLED_RULE_PLUGINS)
    changes what the shipped rules do, without forking them.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")

    def register(fn: F) -> F:
        for event_type in types:
            if event_type in _RULES and not override:
                raise ValueError(f"two rules for {event_type}")
            _RULES[event_type] = RuleSpec(event_type, table, fn)
        return fn

    return register


def rule_for(event_type: str) -> RuleSpec | None:
    """The rule for `event_type`, or None: the type is an explicit, counted no-op."""
    return _RULES.get(event_type)


def view(event: StripeEvent, cls: type[V]) -> V:
    """The event's object view, checked to be a `cls` (else the event is poison)."""
    obj = event.obj
    if not isinstance(obj, cls):
        raise TypeError(f"{event.type} {event.id}: expected {cls.__name__}, got {obj!r}")
    return obj


_SHARED: dict[tuple[type, type], tuple[str, ...]] = {}


def _shared(row: type, view_cls: type) -> tuple[str, ...]:
    """The fields a row and a view both have, by name (computed once per pair)."""
    names = _SHARED.get((row, view_cls))
    if names is None:
        mine = {f.name for f in dataclasses.fields(view_cls)}
        names = _SHARED[(row, view_cls)] = tuple(
            f.name for f in dataclasses.fields(row) if f.name in mine
        )
    return names


def row_of(cls: type[R], obj: ObjectView, event: StripeEvent, **fields: Any) -> R:
    """A `cls` row of `event`: every field the view has by the same name, then `fields`."""
    values = {name: getattr(obj, name) for name in _shared(cls, type(obj))}
    values.update(fields)
    return cls(**values, stamp=stamp_of(event), event_id=event.id)
