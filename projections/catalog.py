"""The movie catalogue (`entitled.movies`): validation, single writes and the bulk load.

The catalogue is the company's own data, not derived from the Stripe log, so it lives in the
control schema and survives replays. Writes are single statements: a search right after a
write sees it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row

from projections.schema import CONTROL

MAX_ID = 128
# Every catalogue write counts itself in `catalog_mark`, after (or with) the write, and
# announces the new count on CATALOG_CHANNEL (delivered at commit): the read API's model of
# recent search answers forgets them when the count moves (`api.model`).
CATALOG_CHANNEL = "entitled_catalog"  # NOTIFY payload: the catalogue's new write count
_COUNT = f"""
WITH c AS (UPDATE {CONTROL}.catalog_mark SET writes = writes + 1 RETURNING writes)
SELECT pg_notify('{CATALOG_CHANNEL}', writes::text) FROM c
"""
MAX_TITLE = 500
MAX_KEYWORDS = 5000
MAX_GROUP = 64
MAX_GROUPS = 50


class InvalidMovie(ValueError):
    """A movie (or movie id, or group name) that the catalogue refuses."""


@dataclass(frozen=True, slots=True)
class Movie:
    movie_id: str
    title: str
    keywords: str
    groups: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "movie_id": self.movie_id,
            "title": self.title,
            "keywords": self.keywords,
            "groups": self.groups,
        }


def _text(value: object, what: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidMovie(f"{what} must be a string")
    if not empty and not value.strip():
        raise InvalidMovie(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidMovie(f"{what} is longer than {max_len} characters")
    # Postgres text holds neither NUL nor lone surrogates (which JSON "\ud800" can produce).
    if "\x00" in value:
        raise InvalidMovie(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMovie(f"{what} is not valid unicode") from exc
    return value


def check_movie_id(value: object) -> str:
    return _text(value, "movie_id", MAX_ID)


def check_group(value: object) -> str:
    group = _text(value, "group", MAX_GROUP)
    # Product metadata lists several groups comma-separated, so a comma cannot be in one.
    if "," in group or group != group.strip():
        raise InvalidMovie("group must not contain commas or surrounding spaces")
    return group


def check_groups(value: object) -> list[str]:
    if not isinstance(value, list):
        raise InvalidMovie("groups must be a list of strings")
    if len(value) > MAX_GROUPS:
        raise InvalidMovie(f"at most {MAX_GROUPS} groups")
    return list(dict.fromkeys(check_group(g) for g in value))


def movie_from_json(movie_id: str, body: object) -> Movie:
    """Validate the body of `PUT /v1/movies/{movie_id}`."""
    if not isinstance(body, dict):
        raise InvalidMovie("body must be a JSON object")
    unknown = set(body) - {"title", "keywords", "groups", "movie_id"}
    if unknown:
        raise InvalidMovie(f"unknown fields: {', '.join(sorted(unknown))}")
    if "movie_id" in body and body["movie_id"] != movie_id:
        raise InvalidMovie("movie_id in the body differs from the path")
    return Movie(
        movie_id=check_movie_id(movie_id),
        title=_text(body.get("title"), "title", MAX_TITLE),
        keywords=_text(body.get("keywords", ""), "keywords", MAX_KEYWORDS, empty=True),
        groups=check_groups(body.get("groups", [])),
    )


_UPSERT_SQL = f"""
INSERT INTO {CONTROL}.movies AS m (movie_id, title, keywords, groups)
VALUES (%(movie_id)s, %(title)s, %(keywords)s, %(groups)s)
ON CONFLICT (movie_id) DO UPDATE
   SET title = excluded.title, keywords = excluded.keywords, groups = excluded.groups,
       updated_at = now()
RETURNING (xmax = 0) AS created
"""


async def put_movie(conn: AsyncConnection[Any], movie: Movie) -> bool:
    """Insert or replace one movie; True if it was new."""
    cur = await conn.execute(_UPSERT_SQL, movie.to_json())
    row = await cur.fetchone()
    await conn.execute(_COUNT)
    return bool(row and row[0])


async def delete_movie(conn: AsyncConnection[Any], movie_id: str) -> bool:
    cur = await conn.execute(f"DELETE FROM {CONTROL}.movies WHERE movie_id = %s", (movie_id,))
    await conn.execute(_COUNT)
    return cur.rowcount > 0


async def writes(conn: AsyncConnection[Any]) -> int:
    """How many catalogue writes were counted so far (`catalog_mark`)."""
    cur = await conn.execute(f"SELECT writes FROM {CONTROL}.catalog_mark")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def add_group(conn: AsyncConnection[Any], movie_id: str, group: str) -> Movie | None:
    """Put a movie in a group (idempotent); None if there is no such movie."""
    return await _regroup(
        conn,
        "CASE WHEN %(group)s = ANY (groups) THEN groups ELSE array_append(groups, %(group)s) END",
        movie_id,
        group,
    )


async def remove_group(conn: AsyncConnection[Any], movie_id: str, group: str) -> Movie | None:
    """Take a movie out of a group (idempotent); None if there is no such movie."""
    return await _regroup(conn, "array_remove(groups, %(group)s)", movie_id, group)


async def _regroup(
    conn: AsyncConnection[Any], expression: str, movie_id: str, group: str
) -> Movie | None:
    query = (
        f"UPDATE {CONTROL}.movies SET groups = {expression}, updated_at = now()"
        " WHERE movie_id = %(movie_id)s RETURNING movie_id, title, keywords, groups"
    )
    async with conn.cursor(row_factory=class_row(Movie)) as cur:
        await cur.execute(query, {"movie_id": movie_id, "group": group})
        movie = await cur.fetchone()
    await conn.execute(_COUNT)
    return movie


# -- bulk load -------------------------------------------------------------------------------


def read_file(path: Path) -> Iterator[Movie]:
    """Movies from a CSV file (header movie_id,title,keywords,groups; groups `;`-separated)
    or a JSON-lines file (one {"movie_id","title","keywords","groups"} object a line)."""
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            yield from _read_jsonl(fh)
        else:
            yield from _read_csv(fh)


def _read_jsonl(lines: Iterable[str]) -> Iterator[Movie]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise InvalidMovie("not a JSON object")
            yield movie_from_json(str(obj.get("movie_id", "")), obj)
        except (ValueError, InvalidMovie) as exc:
            raise InvalidMovie(f"line {number}: {exc}") from exc


def _read_csv(fh: io.TextIOBase | Any) -> Iterator[Movie]:
    reader = csv.DictReader(fh)
    missing = {"movie_id", "title"} - set(reader.fieldnames or ())
    if missing:
        raise InvalidMovie(f"CSV header lacks {', '.join(sorted(missing))}")
    for row in reader:
        groups = [g.strip() for g in (row.get("groups") or "").split(";") if g.strip()]
        body = {"title": row["title"], "keywords": row.get("keywords") or "", "groups": groups}
        try:
            yield movie_from_json(row["movie_id"], body)
        except InvalidMovie as exc:
            raise InvalidMovie(f"line {reader.line_num}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LoadResult:
    inserted: int
    updated: int


async def load_movies(conn: AsyncConnection[Any], movies: Iterable[Movie]) -> LoadResult:
    """Upsert many movies: COPY into a temporary table, then one INSERT ... ON CONFLICT.

    Runs in the caller's transaction (the whole file or nothing). A movie id repeated in the
    input keeps its last line.
    """
    await conn.execute(
        "CREATE TEMPORARY TABLE _movies_in (n bigserial, movie_id text, title text,"
        " keywords text, groups text[]) ON COMMIT DROP"
    )
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY _movies_in (movie_id, title, keywords, groups) FROM STDIN"
        ) as copy:
            for m in movies:
                await copy.write_row((m.movie_id, m.title, m.keywords, m.groups))
        await cur.execute(
            f"""
            INSERT INTO {CONTROL}.movies AS m (movie_id, title, keywords, groups)
            SELECT DISTINCT ON (movie_id) movie_id, title, keywords, groups
              FROM _movies_in ORDER BY movie_id, n DESC
            ON CONFLICT (movie_id) DO UPDATE
               SET title = excluded.title, keywords = excluded.keywords,
                   groups = excluded.groups, updated_at = now()
            RETURNING (xmax = 0)
            """
        )
        flags = [bool(r[0]) for r in await cur.fetchall()]
    await conn.execute("DROP TABLE IF EXISTS _movies_in")
    await conn.execute(_COUNT)
    inserted = sum(flags)
    return LoadResult(inserted=inserted, updated=len(flags) - inserted)


async def load_if_empty(conn: AsyncConnection[Any], movies: Iterable[Movie]) -> LoadResult | None:
    """Load `movies` only when the catalogue is empty (None: it had movies, the user's to
    keep). The lock makes two concurrent starts load them once, not twice; call it inside a
    transaction."""
    await conn.execute(f"LOCK TABLE {CONTROL}.movies IN SHARE ROW EXCLUSIVE MODE")
    cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {CONTROL}.movies)")
    row = await cur.fetchone()
    if row and row[0]:
        return None
    return await load_movies(conn, movies)
