"""The search SQL itself (projections.search), on real Postgres without HTTP."""

from __future__ import annotations

import psycopg
import pytest

from projections import search
from projections.catalog import Movie
from tests.api.api_support import entitle, load_catalog


async def _search(url: str, customer: str, q: str, limit: int = 20) -> list[search.Hit]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await search.search(conn, customer, q, limit)


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


async def test_ties_break_by_title_then_movie_id(database_url: str) -> None:
    same = "the same words"
    load_catalog(
        database_url,
        [
            Movie("b", "Zed", same, []),
            Movie("a", "Zed", same, []),
            Movie("c", "Alpha", same, []),
            Movie("d", "Unrelated", "nothing", []),
        ],
    )
    hits = await _search(database_url, "cus_1", "same words")
    assert [h.movie_id for h in hits] == ["c", "a", "b"]


async def test_reasons_limit_and_stop_words(database_url: str) -> None:
    load_catalog(database_url)
    entitle(database_url, "cus_1", groups=["animated"], movie_ids=["41"])
    hits = await _search(database_url, "cus_1", "pixar", limit=2)
    assert len(hits) == 2 and all(h.reason == "subscription" for h in hits)
    [casablanca] = await _search(database_url, "cus_1", "casablanca bogart")
    assert casablanca.reason == "purchase" and casablanca.available
    # Only stop words: an empty tsquery matches nothing (and raises nothing).
    assert await _search(database_url, "cus_1", "the and of") == []
    assert [h.title for h in await _search(database_url, "cus_1", '"holy grail"')] == [
        "Indiana Jones and the Last Crusade"
    ]
    assert await _search(database_url, "cus_1", "-harrison ford !(:*) <-> '") is not None


def test_blank_query_uses_catalogue_listing() -> None:
    assert search.search_sql("  ") is search.LIST_SQL
    assert search.search_sql("x") is search.MATCH_SQL


async def test_entitlements_unknown_is_none(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert await search.entitlements(conn, "cus_ghost") is None
        assert await search.is_ready(conn)
    entitle(database_url, "cus_row", groups=["drama"])
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await search.entitlements(conn, "cus_row")
    assert row is not None and row["groups"] == ["drama"]
