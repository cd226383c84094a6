"""Catalogue validation (pure) and the bulk load and CLI against real Postgres."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from launcher.cli import main
from projections import catalog
from projections.catalog import InvalidMovie, Movie
from tests.api.api_support import demo_catalog_path


def test_movie_from_json_validates_and_dedups_groups() -> None:
    movie = catalog.movie_from_json("7", {"title": "T", "groups": ["a", "b", "a"]})
    assert movie == Movie("7", "T", "", ["a", "b"])
    for bad in (
        {"title": None},
        {"title": "t", "keywords": 3},
        {"title": "t", "groups": [""]},
        {"title": "t", "groups": [" a"]},
        {"title": "t", "movie_id": "8"},
    ):
        with pytest.raises(InvalidMovie):
            catalog.movie_from_json("7", bad)


def test_demo_catalogue_is_valid_and_has_purchase_only_movies() -> None:
    movies = list(catalog.read_file(demo_catalog_path()))
    assert len(movies) >= 40
    groups = {g for m in movies for g in m.groups}
    assert {"action", "animated", "comedy", "drama", "scifi", "documentary"} <= groups
    assert sum(1 for m in movies if not m.groups) >= 3
    assert len({m.movie_id for m in movies}) == len(movies)


def test_bad_csv_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("movie_id,title,keywords,groups\n1,Ok,,a\n2,,,b\n")
    with pytest.raises(InvalidMovie, match="line 3"):
        list(catalog.read_file(path))
    path.write_text("id,name\n1,x\n")
    with pytest.raises(InvalidMovie, match="header"):
        list(catalog.read_file(path))


def test_cli_migrate_and_load_csv_then_jsonl(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "entitled_v1" in result.output

    csv_file = tmp_path / "movies.csv"
    csv_file.write_text(
        "movie_id,title,keywords,groups\n"
        '1,Alien,"ridley scott, xenomorph",scifi;horror\n'
        "2,Heat,al pacino,\n"
        "1,Alien (Director's Cut),ridley scott,scifi\n"  # repeated: the last line wins
    )
    result = runner.invoke(main, ["catalog", "load", str(csv_file)])
    assert result.exit_code == 0, result.output
    assert "2 inserted, 0 updated" in result.output

    result = runner.invoke(main, ["catalog", "load", str(demo_catalog_path())])
    assert result.exit_code == 0, result.output
    assert "42 inserted, 2 updated" in result.output
    with psycopg.connect(database_url) as conn:
        count, alien = conn.execute(
            "SELECT count(*), max(title) FILTER (WHERE movie_id = '1') FROM entitled.movies"
        ).fetchone()  # type: ignore[misc]
    assert count == 44 and alien == "Raiders of the Lost Ark"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"movie_id": "99", "title": "ok"}\n{"movie_id": "100"}\n')
    result = runner.invoke(main, ["catalog", "load", str(bad)])
    assert result.exit_code != 0 and "line 2" in result.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM entitled.movies").fetchone() == (44,)


def test_load_counts_inserts_and_updates(migrated_url: str) -> None:

    def movies() -> list[Movie]:
        return [Movie("1", "One", "", []), Movie("2", "Two", "", [])]

    from launcher.services._process import run_async

    async def go() -> catalog.LoadResult:
        conn = await psycopg.AsyncConnection.connect(migrated_url)
        async with conn, conn.transaction():
            return await catalog.load_movies(conn, movies())

    assert run_async(go) == catalog.LoadResult(inserted=2, updated=0)
    assert run_async(go) == catalog.LoadResult(inserted=0, updated=2)


def test_demo_catalogue_loads_into_an_empty_catalogue_only(migrated_url: str) -> None:
    from launcher.services._process import run_async

    async def go(movies: list[Movie]) -> catalog.LoadResult | None:
        conn = await psycopg.AsyncConnection.connect(migrated_url)
        async with conn, conn.transaction():
            return await catalog.load_if_empty(conn, movies)

    assert run_async(lambda: go([Movie("1", "One", "", [])])) == catalog.LoadResult(1, 0)
    # the user's catalogue is kept: a second start loads nothing
    assert run_async(lambda: go([Movie("2", "Two", "", [])])) is None
    with psycopg.connect(migrated_url) as conn:
        assert conn.execute("SELECT movie_id FROM entitled.movies").fetchall() == [("1",)]
