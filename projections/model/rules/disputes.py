"""charge.dispute.*: a dispute of a charge; a lost one takes back what the charge paid for."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import DisputeRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import DisputeView


@fold(
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    table="disputes",
)
def dispute_snapshot(event: StripeEvent, current: DisputeRow | None) -> DisputeRow:
    return row_of(DisputeRow, view(event, DisputeView), event)
