"""The swap gate's verdict, a pure function over the dry-run differences."""

from __future__ import annotations

from typing import Any

from processors.swap_gate import losing, refusal


def _diff(customer: str, **changes: list[str]) -> dict[str, Any]:
    keys = ("groups_gained", "groups_lost", "movies_gained", "movies_lost")
    return {"customer": customer, **{k: changes.get(k, []) for k in keys}}


DIFFS = [
    _diff("cus_gain", groups_gained=["action"]),
    _diff("cus_group", groups_lost=["drama"]),
    _diff("cus_movie", movies_lost=["m1"], movies_gained=["m2"]),
]


def test_losing_counts_a_customer_who_loses_any_group_or_movie() -> None:
    assert losing(DIFFS) == ["cus_group", "cus_movie"]
    assert losing([_diff("cus_a", groups_gained=["x"], movies_gained=["m"])]) == []


def test_an_empty_log_is_refused_whatever_the_differences() -> None:
    why = refusal([], entitled=0, log_events=0, max_loss=1.0, topic="stripe.evnets")
    assert why is not None and "empty" in why and "stripe.evnets" in why


def test_a_share_above_the_limit_is_refused_at_or_below_it_allowed() -> None:
    # two of 200 entitled customers lose something: 1%
    assert refusal(DIFFS, entitled=200, log_events=9, max_loss=0.01, topic="t") is None
    why = refusal(DIFFS, entitled=199, log_events=9, max_loss=0.01, topic="t")
    assert why is not None and "2 of the live version's 199" in why
    assert refusal(DIFFS, entitled=2, log_events=9, max_loss=1.0, topic="t") is None
    assert refusal(DIFFS, entitled=2, log_events=9, max_loss=0.0, topic="t") is not None


def test_gains_alone_never_refuse() -> None:
    assert refusal(DIFFS[:1], entitled=0, log_events=1, max_loss=0.0, topic="t") is None
