"""The batch fold: events in log order + the rows they touch -> the rows that changed.

Pure: the caller (a `processors` writer) loads `current` for every `target` of the batch,
passes the ids already applied, and writes `FoldResult.changed` in the same transaction as
the offsets. Unknown event types are an explicit, counted no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from projections.errors import FoldError
from projections.events import StripeEvent
from projections.rows import RefundRow, Row, customer_of
from projections.rules import rule_for

__all__ = ["FoldResult", "Key", "fold_batch", "target"]

Key = tuple[str, str]  # (table, object id)


def target(event: StripeEvent) -> Key | None:
    """The (table, object id) `event` writes, or None if no rule reads it."""
    spec = rule_for(event.type)
    if spec is None or event.object_id is None:
        return None
    return (spec.table, event.object_id)


@dataclass
class FoldResult:
    changed: dict[Key, Row] = field(default_factory=dict)
    # customers whose entitlements may have changed: the customer of every changed row
    # (before and after) and of the event
    customers: set[str] = field(default_factory=set)
    # products whose row changed: a group change affects every subscriber of the product
    products: set[str] = field(default_factory=set)
    # payment intents of changed refunds: Stripe rarely puts the customer on a refund, so
    # the writer finds it through the purchases / charges of these payment intents
    payment_intents: set[str] = field(default_factory=set)
    unknown: int = 0
    skipped_duplicates: int = 0
    stale: int = 0  # events older than the row they target (delivered late): no change
    applied: list[str] = field(default_factory=list)  # ids newly seen, in log order
    last_event: dict[str, StripeEvent] = field(default_factory=dict)  # per customer


def fold_batch(
    events: Sequence[StripeEvent], current: Mapping[Key, Row], seen: Set[str]
) -> FoldResult:
    """Fold `events` (log order) over `current`; skip ids in `seen` or repeated in the batch.

    A rule that raises is re-raised as `FoldError(event)` (the cause chained), so the
    caller can dead-letter that event and park its customer.
    """
    result = FoldResult()
    rows: dict[Key, Row] = {}
    batch_ids: set[str] = set()
    for event in events:
        if event.id in seen or event.id in batch_ids:
            result.skipped_duplicates += 1
            continue
        batch_ids.add(event.id)
        result.applied.append(event.id)
        spec = rule_for(event.type)
        if spec is None or event.object_id is None:
            result.unknown += 1
            continue
        key = (spec.table, event.object_id)
        before = rows[key] if key in rows else current.get(key)
        try:
            after = spec.apply(event, before)
        except Exception as exc:  # any rule bug makes this one event poison, nothing more
            raise FoldError(event, f"{event.type} {event.id}: {exc!r}") from exc
        if after is None:
            result.stale += 1
            continue
        rows[key] = after
        result.changed[key] = after
        if spec.table == "products":
            result.products.add(after.id)
        if isinstance(after, RefundRow) and after.payment_intent:
            result.payment_intents.add(after.payment_intent)
        for customer in {customer_of(after), event.customer} | (
            {customer_of(before)} if before is not None else set()
        ):
            if customer:
                result.customers.add(customer)
                result.last_event[customer] = event
    return result
