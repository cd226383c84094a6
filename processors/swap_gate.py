"""The swap gate: when a rebuilt version must not replace the live one unless forced.

A build from an empty log (a typo in `ENTITLED_TOPIC`) or one that takes entitlements away
from many customers (a wrong rule, the wrong topic) would, once swapped in, cut customers
off. Pure functions over the dry-run differences (`projections.versions.differences`), or
the count of customers losing something among them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["losing", "refusal", "refusal_by_count"]


def losing(differences: Sequence[Mapping[str, Any]]) -> list[str]:
    """Customers who lose at least one group or movie (so held something in live)."""
    return [d["customer"] for d in differences if d["groups_lost"] or d["movies_lost"]]


def refusal(
    differences: Sequence[Mapping[str, Any]],
    *,
    entitled: int,
    log_events: int,
    max_loss: float,
    topic: str,
) -> str | None:
    """Why the new version must not be swapped in, or None when it may.

    `entitled`: customers holding anything in the live version; `log_events`: records in
    the topic; `max_loss`: the largest share of `entitled` that may lose something.
    """
    return refusal_by_count(
        len(losing(differences)),
        entitled=entitled,
        log_events=log_events,
        max_loss=max_loss,
        topic=topic,
    )


def refusal_by_count(
    lost: int, *, entitled: int, log_events: int, max_loss: float, topic: str
) -> str | None:
    """`refusal` from the number of customers who would lose something (`losing`), counted
    over a comparison read in slices."""
    if log_events == 0:
        return (
            f"the log is empty: topic {topic!r} holds no event at all (a typo in ENTITLED_TOPIC?)"
        )
    if not lost:
        return None
    share = lost / entitled if entitled else 1.0
    if share <= max_loss:
        return None
    return (
        f"{lost} of the live version's {entitled} entitled customers would lose"
        f" entitlements ({share:.1%}, more than the {max_loss:.1%} allowed)"
    )
