"""The batch fold: events in log order + the rows they touch -> the rows that changed.

Pure: the caller (a `processors` writer) loads `current` for every `target` of the batch,
passes the ids already applied, and writes `FoldResult.changed` in the same transaction as
the offsets. Unknown event types and events that describe no stored state are explicit,
counted no-ops; only a rule that raises makes an event poison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from projections.errors import FoldError
from projections.model.events import StripeEvent
from projections.model.rows import (
    ChargeRow,
    DisputeRow,
    InvoicePaymentRow,
    ProductFeaturesRow,
    RefundRow,
    Row,
    customer_of,
)
from projections.model.rows import refs_of as _refs_of
from projections.model.rules import RuleSpec, rule_for

__all__ = ["FoldResult", "Key", "fold_batch", "target"]

Key = tuple[str, str]  # (table, object id)

# Rows that rarely name a customer: they reach one through the ids they point at.
_LINKS = (RefundRow, DisputeRow, InvoicePaymentRow)


def _rule(event: StripeEvent) -> RuleSpec | None:
    """The rule that folds `event`, or None when nothing will be written for it."""
    if event.obj is None or event.object_id is None:
        return None
    return rule_for(event.type)


def target(event: StripeEvent) -> Key | None:
    """The (table, object id) `event` writes, or None if no rule reads it."""
    spec = _rule(event)
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
    # ids that other customers' rows may point at, from changed rows that name no customer
    # (refunds, disputes, invoice payments, charges without one): payment intents, charges,
    # invoices. The writer finds whose they are through the holders' ids and refs.
    links: set[str] = field(default_factory=set)
    unknown: int = 0  # events with a snapshot that no rule reads
    # events that describe no stored state, by type: no `data.object`, an object without an
    # id (previews such as invoice.upcoming), thin event notifications
    ignored: Counter[str] = field(default_factory=Counter)
    ties: int = 0  # same-key snapshots that only log order could order
    skipped_duplicates: int = 0
    stale: int = 0  # events older than the row they target (delivered late): no change
    applied: list[str] = field(default_factory=list)  # ids newly seen, in log order
    types: dict[str, str] = field(default_factory=dict)  # their types (the history names them)


def _links_of(row: Row) -> set[str]:
    if isinstance(row, _LINKS) or (isinstance(row, ChargeRow) and row.customer is None):
        return set(_refs_of(row))
    return set()


def _features_changed(before: Row | None, after: ProductFeaturesRow) -> bool:
    """A product's features changed: every subscriber of it must be recomputed."""
    return not isinstance(before, ProductFeaturesRow) or before.lookup_keys != after.lookup_keys


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
        result.types[event.id] = event.type
        if event.object_id is None:
            result.ignored[event.type] += 1
            continue
        spec = rule_for(event.type)
        if spec is None:
            result.unknown += 1
            continue
        if event.obj is None:  # a rule, but the object is not one it can read
            result.ignored[event.type] += 1
            continue
        key = (spec.table, event.object_id)
        before = rows[key] if key in rows else current.get(key)
        try:
            settled = spec.resolve(event, before)
        except Exception as exc:  # any rule bug makes this one event poison, nothing more
            raise FoldError(event, f"{event.type} {event.id}: {exc!r}") from exc
        after = settled.row
        if after is None:
            result.stale += 1
            continue
        result.ties += settled.tie
        rows[key] = after
        result.changed[key] = after
        if spec.table == "products":
            result.products.add(after.id)
        if isinstance(after, ProductFeaturesRow) and _features_changed(before, after):
            # the product's id reaches its subscribers (their items' refs) in recompute
            result.links.add(after.id)
        result.links |= _links_of(after)
        if before is not None:
            result.links |= _links_of(before)
        for customer in (customer_of(after), event.customer, before and customer_of(before)):
            if customer:
                result.customers.add(customer)
    return result
