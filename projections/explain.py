"""Why a customer may or may not watch a movie (or holds what they hold), at a moment.

Built from the customer's history (`projections.history`) alone: each history row stores the
grant sources behind what the customer held after it (`projections.model.grants`), written
when the change happened. So `explain` at a past moment reads the reasons as they were, with
no mirrored rows kept in time, and a removal is the change that took it away, with its event.
No SQL here: `projections.history` reads the rows, the API and the CLI render the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.errors import ProjectionError
from projections.history import Entry

__all__ = [
    "NothingRecorded",
    "explain_customer",
    "explain_movie",
    "explanation",
    "removal_kind",
]


class NothingRecorded(ProjectionError):
    """No history of the customer (at that moment): nothing to explain."""


def removal_kind(event_type: str | None, cause: str) -> str:
    """What kind of event took a right away, for people: cancellation, refund, lost dispute,
    regroup (a product's groups, movies or features changed), ..."""
    t = event_type or ""
    if cause == "forget":
        return "forget"
    if t.startswith("charge.dispute."):
        return "lost dispute"
    if t.startswith(("charge.refund", "refund.")) or t == "charge.refunded":
        return "refund"
    if t == "customer.subscription.deleted":
        return "cancellation"
    if t.startswith("customer.subscription."):
        return "subscription change"  # a status that stops entitling, an item removed
    if t.startswith(("product.", "price.", "entitlements.feature")):
        return "regroup"
    if t.startswith("entitlements.active_entitlement_summary"):
        return "entitlement summary"
    if t == "customer.deleted":
        return "customer deleted"
    if t.startswith(("invoice.", "payment_intent.", "checkout.session.")):
        return "payment"
    if not t:
        return "rebuild" if cause == "rebuild" else "replay"
    return t


def _event(e: Entry) -> dict[str, Any]:
    return {
        "change_id": e.id,
        "when": e.event_created,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "cause": e.cause,
    }


def _holds(groups: Sequence[str], movies: Sequence[str], movie: str, in_groups: set[str]) -> bool:
    return movie in movies or bool(in_groups.intersection(groups))


def explain_movie(
    entries: Sequence[Entry], movie_id: str, movie_groups: Sequence[str] | None
) -> dict[str, Any]:
    """Whether the customer could watch `movie_id` after the last of `entries` (their history
    up to the moment, oldest first), which sources granted it and which change did; or
    which change took it away and why. `movie_groups` (today's catalogue; None: not in it)."""
    in_groups = set(movie_groups or ())
    last = entries[-1] if entries else None
    groups = last.groups_after if last else []
    movies = last.movies_after if last else []
    available = _holds(groups, movies, movie_id, in_groups)
    granted: list[dict[str, Any]] = []
    if last is not None:
        for g in sorted(in_groups.intersection(groups)):
            sources = last.grants.get("groups", {}).get(g, [])
            granted.append({"group": g, "sources": sources})
        if movie_id in movies:
            granted.append(
                {"movie": movie_id, "sources": last.grants.get("movies", {}).get(movie_id, [])}
            )
    since: Entry | None = None
    taken: Entry | None = None
    for e in entries:
        before = _holds(e.groups_before, e.movies_before, movie_id, in_groups)
        after = _holds(e.groups_after, e.movies_after, movie_id, in_groups)
        if after and not before:
            since = e
        elif before and not after:
            taken = e
    out: dict[str, Any] = {
        "movie_id": movie_id,
        "movie_groups": sorted(in_groups),
        "in_catalogue": movie_groups is not None,
        "available": available,
        "granted_by": granted,
        "granted_at": _event(since) if available and since is not None else None,
        "taken_away": None,
    }
    if not available and taken is not None:
        out["taken_away"] = {
            **_event(taken),
            "kind": removal_kind(taken.event_type, taken.cause),
            "groups_lost": sorted(in_groups.intersection(taken.groups_before)),
            "movie_lost": movie_id in taken.movies_before,
        }
    return out


def explain_customer(entries: Sequence[Entry]) -> dict[str, Any]:
    """Everything held after the last of `entries`, each with its sources and the change
    that granted it; and what was held before but not any more, with the change that took
    it away."""
    last = entries[-1] if entries else None
    held: dict[str, dict[str, dict[str, Any]]] = {"groups": {}, "movies": {}}
    lost: dict[str, dict[str, dict[str, Any]]] = {"groups": {}, "movies": {}}
    for e in entries:
        for kind, before, after in (
            ("groups", e.groups_before, e.groups_after),
            ("movies", e.movies_before, e.movies_after),
        ):
            for name in after:
                if name not in before:
                    held[kind][name] = {"granted_at": _event(e)}
                    lost[kind].pop(name, None)
            for name in before:
                if name not in after:
                    held[kind].pop(name, None)
                    lost[kind][name] = {
                        "taken_away": {**_event(e), "kind": removal_kind(e.event_type, e.cause)}
                    }
    for kind in ("groups", "movies"):
        for name, item in held[kind].items():
            item["sources"] = [] if last is None else last.grants.get(kind, {}).get(name, [])
    return {
        "groups": dict(sorted(held["groups"].items())),
        "movies": dict(sorted(held["movies"].items())),
        "lost": {k: dict(sorted(v.items())) for k, v in lost.items()},
        "last_change": None if last is None else _event(last),
    }


def explanation(
    customer: str,
    movie_id: str | None,
    at: int | None,
    entries: Sequence[Entry],
    found: tuple[str, list[str]] | None,
) -> dict[str, Any]:
    """The explain answer (HTTP and `entitled explain --json`) from the customer's history up
    to `at` and the movie's catalogue entry (title, groups; None: not in the catalogue).
    `NothingRecorded` when they have no history (before `at`)."""
    if not entries:
        raise NothingRecorded(
            f"no history of {customer} in the projection"
            if at is None
            else f"as_of={at} is before the first change recorded for {customer}"
        )
    body: dict[str, Any] = {"customer": customer, "as_of": at, "version": entries[-1].version}
    if movie_id is None:
        return {**body, **explain_customer(entries)}
    title = None if found is None else found[0]
    groups = None if found is None else found[1]
    return {**body, "title": title, **explain_movie(entries, movie_id, groups)}
