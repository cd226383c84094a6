"""charge.dispute.* rules: every dispute event is folded; closing decides the stage."""

from __future__ import annotations

from typing import Any

import pytest

from projections.model.rows import DisputeRow
from projections.model.rules import rule_for
from projections.model.rules.disputes import dispute_snapshot
from tests.support.parsed import ev

TYPES = (
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)


def dispute(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "dp_1",
        "object": "dispute",
        "charge": "ch_1",
        "payment_intent": None,
        "amount": 399,
        "status": status,
        **fields,
    }


@pytest.mark.parametrize("event_type", TYPES)
def test_every_dispute_type_folds_into_disputes(event_type: str) -> None:
    spec = rule_for(event_type)
    assert spec is not None and spec.table == "disputes" and spec.fn is dispute_snapshot
    row = dispute_snapshot(ev(event_type, dispute("lost", payment_intent={"id": "pi_1"})), None)
    assert row == DisputeRow("dp_1", "ch_1", "pi_1", "lost", 399, row.stamp, row.event_id)


def test_closed_beats_open_in_the_same_second_in_either_order() -> None:
    spec = rule_for("charge.dispute.closed")
    assert spec is not None
    opened = ev("charge.dispute.updated", dispute("under_review"), created=5, offset=9)
    closed = ev("charge.dispute.closed", dispute("lost"), created=5, offset=1)
    for first, second in ((opened, closed), (closed, opened)):
        row = spec.apply(first, None)
        final = spec.apply(second, row) or row
        assert isinstance(final, DisputeRow) and final.status == "lost"
