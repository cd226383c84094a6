"""explain on plain history entries: what granted a movie, which change took it away."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from projections.explain import (
    NothingRecorded,
    explain_customer,
    explain_movie,
    explanation,
    removal_kind,
)
from projections.history import Entry

SOURCE = {"source": "metadata", "subscription": "sub_1", "item": "si_1", "product": "p"}


def entry(
    n: int,
    groups: tuple[list[str], list[str]],
    movies: tuple[list[str], list[str]] = ([], []),
    *,
    event_type: str | None = "customer.subscription.created",
    cause: str = "event",
    grants: dict[str, Any] | None = None,
) -> Entry:
    return Entry(
        id=n,
        customer="cus_1",
        groups_before=groups[0],
        groups_after=groups[1],
        movies_before=movies[0],
        movies_after=movies[1],
        cause=cause,
        event_id=f"evt_{n}",
        event_type=event_type,
        event_created=1000 + n,
        grants=grants or {"groups": {g: [SOURCE] for g in groups[1]}, "movies": {}},
        created_at=datetime.now(UTC),
        version=3,
    )


def test_granted_by_a_group_since_the_change_that_added_it() -> None:
    history = [entry(1, ([], ["action"])), entry(2, (["action"], ["action", "drama"]))]
    e = explain_movie(history, "4", ["action", "drama"])
    assert e["available"] is True
    assert [g["group"] for g in e["granted_by"]] == ["action", "drama"]
    assert e["granted_by"][0]["sources"] == [SOURCE]
    assert e["granted_at"]["event_id"] == "evt_1"  # available since the first: drama added later
    assert e["taken_away"] is None


def test_taken_away_by_the_change_that_removed_the_last_grant() -> None:
    history = [
        entry(1, ([], ["action"])),
        entry(2, (["action"], []), event_type="customer.subscription.deleted"),
    ]
    e = explain_movie(history, "1", ["action"])
    assert e["available"] is False and e["granted_by"] == []
    assert e["taken_away"]["kind"] == "cancellation"
    assert (e["taken_away"]["event_id"], e["taken_away"]["groups_lost"]) == ("evt_2", ["action"])


def test_a_movie_never_held_and_one_not_in_the_catalogue() -> None:
    history = [entry(1, ([], ["action"]))]
    assert explain_movie(history, "22", ["drama"])["taken_away"] is None
    unknown = explain_movie(history, "999", None)
    assert unknown["in_catalogue"] is False and unknown["available"] is False


@pytest.mark.parametrize(
    ("event_type", "cause", "kind"),
    [
        ("charge.refunded", "event", "refund"),
        ("refund.updated", "event", "refund"),
        ("charge.dispute.closed", "event", "lost dispute"),
        ("customer.subscription.deleted", "event", "cancellation"),
        ("customer.subscription.updated", "event", "subscription change"),
        ("product.updated", "event", "regroup"),
        (None, "forget", "forget"),
        (None, "rebuild", "rebuild"),
        (None, "build", "replay"),
    ],
)
def test_removal_kinds(event_type: str | None, cause: str, kind: str) -> None:
    assert removal_kind(event_type, cause) == kind


def test_the_whole_customer_and_nothing_recorded() -> None:
    history = [
        entry(1, ([], ["action"]), (["7"], [])),
        entry(2, (["action"], ["action"]), ([], ["7"]), event_type="checkout.session.completed"),
        entry(3, (["action"], []), (["7"], ["7"]), event_type="product.updated"),
    ]
    whole = explain_customer(history)
    assert list(whole["movies"]) == ["7"] and whole["groups"] == {}
    assert whole["lost"]["groups"]["action"]["taken_away"]["kind"] == "regroup"
    with pytest.raises(NothingRecorded):
        explanation("cus_1", None, 5, [], None)
