"""The fold rule registry: one rule per Stripe event type, registered by name.

A rule is a pure function `(event, current row or None) -> new row or None`. It builds the
row from the event's snapshot; whether the snapshot is newer than the current row is decided
once, here (`supersedes`), not in every rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from projections.events import ObjectView, StripeEvent
from projections.rows import TABLES, Row, Stamp, rank_of

__all__ = [
    "RULES",
    "RuleFn",
    "RuleSpec",
    "fold",
    "rule_for",
    "stamp_of",
    "supersedes",
    "view",
]

RuleFn = Callable[[StripeEvent, Any], Row | None]
F = TypeVar("F", bound=Callable[..., Row | None])
V = TypeVar("V", bound=ObjectView)

_RULES: dict[str, RuleSpec] = {}
RULES: Mapping[str, RuleSpec] = MappingProxyType(_RULES)


def stamp_of(event: StripeEvent) -> Stamp:
    return Stamp(event.created, rank_of(event.type), 0, event.partition, event.offset)


def _key(stamp: Stamp) -> tuple[bool, Stamp]:
    # Terminal snapshots (deleted, canceled, expired, voided) are tombstones: they beat any
    # non-terminal snapshot whatever its time, so an update delivered late (or stamped a
    # second later by a skewed clock) never resurrects the object. A total order, so the
    # result is the same in any delivery order.
    return (stamp.rank == 2, stamp)


def supersedes(event: StripeEvent, current: Row | None) -> bool:
    """True when `event`'s snapshot should replace `current` (keep the newest snapshot)."""
    return current is None or _key(stamp_of(event)) > _key(current.stamp)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    type: str
    table: str
    fn: RuleFn

    def apply(self, event: StripeEvent, current: Row | None) -> Row | None:
        """The rule's new row, or None when the event is older than `current`."""
        if not supersedes(event, current):
            return None
        return self.fn(event, current)


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
