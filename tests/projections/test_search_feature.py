"""`feature=` on a search: only the movies a Stripe Entitlements lookup key grants, on real
Postgres (the SQL) and through the app (the parameter)."""

from __future__ import annotations

import psycopg
import pytest

from projections import search
from projections.catalog import Movie
from tests.api.api_support import entitle, load_catalog

MOVIES = [
    Movie("1", "Raiders", "harrison ford", ["action"]),
    Movie("4", "The Fugitive", "harrison ford", ["action", "drama"]),
    Movie("7", "Witness", "harrison ford", ["drama"]),
    Movie("9", "Blade Runner", "harrison ford", ["scifi"]),
]


async def _search(
    url: str, q: str, within: tuple[list[str], list[str]] | None
) -> list[tuple[str, str | None]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        hits = await search.search(conn, "cus_1", q, 20, within=within)
    return sorted((h.movie_id, h.reason) for h in hits)


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


async def test_within_keeps_the_movies_a_feature_grants(database_url: str) -> None:
    load_catalog(database_url, MOVIES)
    entitle(database_url, "cus_1", groups=["drama"])
    for q in ("harrison", ""):
        assert await _search(database_url, q, None) == [
            ("1", None),
            ("4", "subscription"),
            ("7", "subscription"),
            ("9", None),
        ]
        assert await _search(database_url, q, (["action"], [])) == [
            ("1", None),
            ("4", "subscription"),
        ]
        assert await _search(database_url, q, ([], ["9"])) == [("9", None)]
        assert await _search(database_url, q, ([], [])) == []  # a key that grants nothing
