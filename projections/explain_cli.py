"""`entitled explain cus_... [MOVIE_ID] [--at TIME] [--json]`: why a customer may (or may
not) watch a movie, or why they hold what they hold, now or at a past moment.

It reads the active version's history on `DATABASE_URL` (`projections.history`) and prints
the same answer as `GET /v1/customers/{id}/explain`: as text for people, `--json` for programs.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from entitled.settings import Settings
from projections.cli import database_settings


def parse_time(value: str) -> int:
    """A unix time in seconds, or an ISO 8601 date and time (UTC unless it says otherwise)."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a unix time nor an ISO 8601 time", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


async def _answer(url: str, customer: str, movie_id: str | None, at: int | None) -> dict[str, Any]:
    import psycopg

    from projections import explain, history

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        entries = await history.entries_until(conn, customer, at)
        found = None if movie_id is None else await history.movie(conn, movie_id)
    return explain.explanation(customer, movie_id, at, entries, found)


def _when(t: int | None) -> str:
    return "an unknown time" if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _change(c: dict[str, Any]) -> str:
    what = c["event_type"] or c["cause"]
    return f"{what} {c['event_id'] or ''} at {_when(c['when'])}".replace("  ", " ")


def _source(s: dict[str, Any]) -> str:
    kind = s.get("source")
    if kind == "metadata":
        return (
            f"subscription {s['subscription']} ({s['status']}), item {s['item']}, product"
            f" {s['product']} (metadata {s['metadata_key']}); last event {s['event_id']}"
        )
    if kind == "feature":
        return (
            f"Stripe feature {s['lookup_key']} on product {s['product']} of subscription"
            f" {s['subscription']} ({s['status']}), item {s['item']}; last event {s['event_id']}"
        )
    if kind == "summary":
        return f"Stripe's entitlement summary key {s['lookup_key']} (event {s['event_id']})"
    if kind == "purchase":
        via = f" of product {s['product']}" if s.get("product") else ""
        return f"purchase {s['purchase']} ({s['kind']}){via}; last event {s['event_id']}"
    return str(s)


def render(answer: dict[str, Any]) -> str:
    """The answer for people."""
    who = answer["customer"]
    at = "now" if answer["as_of"] is None else f"at {_when(answer['as_of'])}"
    lines: list[str] = []
    if "movie_id" in answer:
        movie = answer["movie_id"]
        title = f" ({answer['title']})" if answer.get("title") else ""
        if not answer["in_catalogue"]:
            title = " (not in the catalogue)"
        verdict = "may watch" if answer["available"] else "may not watch"
        lines.append(f"{who} {verdict} movie {movie}{title} {at}.")
        for grant in answer["granted_by"]:
            what = f"group {grant['group']}" if "group" in grant else f"movie {grant['movie']}"
            lines.append(f"  {what}, granted by:")
            lines += [f"    - {_source(s)}" for s in grant["sources"]]
        if answer["granted_at"]:
            lines.append(f"  available since {_change(answer['granted_at'])}")
        gone = answer["taken_away"]
        if gone:
            lost = ", ".join(
                [f"group {g}" for g in gone["groups_lost"]]
                + ([f"movie {movie}"] if gone["movie_lost"] else [])
            )
            lines.append(f"  taken away by a {gone['kind']}: {_change(gone)} ({lost} lost)")
        elif not answer["available"]:
            groups = ", ".join(answer["movie_groups"]) or "no group"
            lines.append(f"  never held: the movie is in {groups} and was not bought")
        return "\n".join(lines)
    lines.append(f"{who} {at}:")
    for kind in ("groups", "movies"):
        for name, item in answer[kind].items():
            lines.append(f"  holds {kind[:-1]} {name} since {_change(item['granted_at'])}")
            lines += [f"    - {_source(s)}" for s in item["sources"]]
        for name, item in answer["lost"][kind].items():
            gone = item["taken_away"]
            lines.append(f"  lost {kind[:-1]} {name} by a {gone['kind']}: {_change(gone)}")
    if len(lines) == 1:
        lines.append("  holds nothing")
    return "\n".join(lines)


@click.command()
@click.argument("customer")
@click.argument("movie_id", required=False)
@click.option("--at", "at", help="a past moment: unix seconds or ISO 8601 (default: now)")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON (for programs)")
def explain(customer: str, movie_id: str | None, at: str | None, as_json: bool) -> None:
    """Why CUSTOMER may or may not watch MOVIE_ID (or holds what they hold), with the events
    that granted or took it away."""
    import psycopg

    from projections.explain import NothingRecorded

    settings = database_settings(Settings.from_env())
    assert settings.database_url is not None
    moment = None if at is None else parse_time(at)
    if moment is not None and moment > time.time():
        raise click.BadParameter(
            "is in the future: the history knows only the past", param_hint="--at"
        )
    try:
        answer = asyncio.run(_answer(settings.database_url, customer, movie_id, moment))
    except NothingRecorded as exc:
        raise click.ClickException(str(exc)) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise click.ClickException("schema not migrated: run `entitled migrate`") from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
    click.echo(
        orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() if as_json else render(answer)
    )
