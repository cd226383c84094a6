"""Build parsed events from the Stripe event factory, numbered in log order."""

from __future__ import annotations

import itertools
from typing import Any

from launcher.stripe import events as se
from projections.model.events import StripeEvent, parse

_offsets = itertools.count()


def ev(
    type: str,
    obj: dict[str, Any],
    *,
    created: int = 1_700_000_000,
    partition: int = 0,
    offset: int | None = None,
    api_version: str | None = se.CURRENT_API_VERSION,
    id: str | None = None,
    previous_attributes: dict[str, Any] | None = None,
) -> StripeEvent:
    """The event `type` about `obj`, through encode + parse like a real log message."""
    raw = se.encode(
        se.event(
            type,
            obj,
            created=created,
            api_version=api_version,
            id=id,
            previous_attributes=previous_attributes,
        )
    )
    return parse(raw, partition=partition, offset=next(_offsets) if offset is None else offset)
