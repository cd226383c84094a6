"""Which of the same-key snapshots of one object is the newest: the last steps of the order
documented in `projections.model.rows` (same coarse key: `previous_attributes` chains, then log
order, a counted tie), and the fields a snapshot changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projections.model._records import Changes
from projections.model.rows import Row, coarse

__all__ = ["Settled", "changes", "content", "settle"]


# Fields that place a snapshot rather than describe the object.
_PLACING = frozenset({"stamp", "event_id", "previous", "rivals"})


_DESCRIBED: dict[type[Any], tuple[str, ...]] = {}


def _described(cls: type[Row]) -> tuple[str, ...]:
    names = _DESCRIBED.get(cls)
    if names is None:
        names = _DESCRIBED[cls] = tuple(
            f.name for f in dataclasses.fields(cls) if f.name not in _PLACING
        )
    return names


def content(row: Row) -> tuple[Any, ...]:
    """What a snapshot says about the object (every field but where it sits in the log)."""
    return tuple(getattr(row, name) for name in _described(type(row)))


def changes(before: Row, after: Row) -> Changes:
    """The fields `after` changed from `before`, with their `before` values."""
    return tuple(
        (name, getattr(before, name))
        for name in _described(type(after))
        if getattr(before, name) != getattr(after, name)
    )


def _prior(row: Row) -> tuple[Any, ...] | None:
    """The object's state just before this snapshot (None: the event did not say)."""
    if not row.previous:
        return None
    old = dict(row.previous)
    return tuple(old.get(name, getattr(row, name)) for name in _described(type(row)))


@dataclass(frozen=True, slots=True)
class Settled:
    """The row to keep (None: the incoming snapshot is older, nothing changes) and whether
    log order had to decide between different snapshots (a tie)."""

    row: Row | None
    tie: bool = False


# Up to this many same-key snapshots, every chain through them is tried.
_EXHAUSTIVE = 6
# A row keeps at most this many same-key snapshots (itself and its rivals).
_MOST_RIVALS = 16


def _longest_paths(follows: list[list[bool]]) -> set[int]:
    """The last nodes of the longest simple paths of the `follows` graph."""
    n = len(follows)
    best, ends = 0, set(range(n))

    def walk(node: int, length: int, visited: int) -> None:
        nonlocal best, ends
        if length > best:
            best, ends = length, {node}
        elif length == best:
            ends.add(node)
        for nxt in range(n):
            if follows[node][nxt] and not visited >> nxt & 1:
                walk(nxt, length + 1, visited | 1 << nxt)

    for start in range(n):
        walk(start, 0, 1 << start)
    return ends


def _chain_end(pool: Sequence[Row]) -> tuple[Row, bool]:
    """The newest of same-key snapshots, and whether log order chose it."""
    states = [content(r) for r in pool]
    if len(set(states)) == 1:  # the same state twice (invoice.paid + payment_succeeded)
        return min(pool, key=lambda r: r.event_id), False
    priors = [_prior(r) for r in pool]
    n = len(pool)
    # i -> j: snapshot j was taken right after snapshot i (its prior state is i's state)
    follows = [
        [priors[j] is not None and priors[j] == states[i] != states[j] for j in range(n)]
        for i in range(n)
    ]
    if n <= _EXHAUSTIVE:
        # The end of the longest chain the previous_attributes describe (a change undone,
        # active -> past_due -> active, ends with the second "active", not the first).
        ends = _longest_paths(follows)
    else:
        ends = {i for i in range(n) if not any(follows[i])}
    if len({states[i] for i in ends}) == 1:
        return pool[min(ends, key=lambda i: pool[i].event_id)], False
    candidates = [pool[i] for i in ends] or list(pool)
    return max(candidates, key=lambda r: r.stamp), True


def settle(current: Row | None, incoming: Row) -> Settled:
    """Keep the newest of `current` (with its rivals) and `incoming`, by the documented order.

    A snapshot with a lower coarse key is never chosen over the stored one, so the writer's
    SQL guard (which compares coarse keys only) never refuses what the fold decided.
    """
    if current is None:
        return Settled(incoming)
    mine, theirs = coarse(incoming.stamp), coarse(current.stamp)
    if mine != theirs:
        return Settled(incoming if mine > theirs else None)
    alone: Any = current  # mypy cannot replace a field across a union of row classes
    pool: list[Row] = [dataclasses.replace(alone, rivals=()), *current.rivals]
    if any(r.event_id == incoming.event_id for r in pool):
        return Settled(None)  # folded already
    pool.append(incoming)
    if len(pool) > _MOST_RIVALS:
        # A script updating one object many times a second: keep the latest in log order
        # (beyond this many, the answer may depend on delivery order).
        pool = sorted(pool, key=lambda r: r.stamp)[-_MOST_RIVALS:]
    winner, tie = _chain_end(pool)
    rivals = tuple(sorted((r for r in pool if r is not winner), key=lambda r: r.event_id))
    chosen: Any = winner
    return Settled(dataclasses.replace(chosen, rivals=rivals), tie)
