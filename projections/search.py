"""The read side's SQL: movie search with availability, a customer's entitlements, customers.

Every reader goes through the `live` views and `entitled.movies`, never a version schema, so
a replay's version swap is invisible here. Each answer is one SQL statement: one round trip,
one snapshot.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row

from projections.schema import CONTROL, LIVE

# Both queries LEFT JOIN the customer's one entitlements row (an unknown customer gives NULLs,
# hence nothing available). A subscription reason wins over a purchase: it is the broader
# right, and a subscriber who also bought the movie keeps it if the subscription ends.
_REASON = """
    CASE WHEN m.groups && e.groups THEN 'subscription'
         WHEN m.movie_id = ANY (e.movie_ids) THEN 'purchase'
    END AS reason
"""

# `feature=` on a search: only the movies a feature's lookup key grants (its group or its
# movie); `all` true when no feature is asked.
_WITHIN = """
    (%(all)s OR m.groups && %(groups)s::text[] OR m.movie_id = ANY (%(movies)s::text[]))
"""

# websearch_to_tsquery accepts any text (operators, quotes, unbalanced parentheses) without
# raising, unlike to_tsquery; the GIN index on `search` serves the @@.
MATCH_SQL = f"""
SELECT m.movie_id, m.title, m.groups, {_REASON}
FROM {CONTROL}.movies m
CROSS JOIN websearch_to_tsquery('english', %(q)s) AS query
LEFT JOIN {LIVE}.customer_entitlements e ON e.customer = %(customer)s
WHERE m.search @@ query AND {_WITHIN}
ORDER BY ts_rank(m.search, query) DESC, m.title, m.movie_id
LIMIT %(limit)s
"""

# An empty query lists the catalogue (the page's first screen).
LIST_SQL = f"""
SELECT m.movie_id, m.title, m.groups, {_REASON}
FROM {CONTROL}.movies m
LEFT JOIN {LIVE}.customer_entitlements e ON e.customer = %(customer)s
WHERE {_WITHIN}
ORDER BY m.title, m.movie_id
LIMIT %(limit)s
"""

# The read model's statements (`api.model`). Each returns, from its own snapshot, the marks a
# model needs to know what its answer is current as of: the feed's head (greatest change id),
# the active version and the count of catalogue writes.
_MARKS = f"""
(SELECT coalesce(max(id), 0) FROM {CONTROL}.changes) AS head,
(SELECT version FROM {CONTROL}.active) AS version,
(SELECT writes FROM {CONTROL}.catalog_mark) AS catalog
"""

# The catalogue's part of a search, for any customer (the model marks availability itself,
# as `_REASON` does), with the same WHERE and ORDER BY as MATCH_SQL / LIST_SQL, so both paths
# give the same movies in the same order.
_CATALOGUE_MATCH = f"""
SELECT m.movie_id, m.title, m.groups, ts_rank(m.search, query) AS rank
FROM {CONTROL}.movies m
CROSS JOIN websearch_to_tsquery('english', %(q)s) AS query
WHERE m.search @@ query AND {_WITHIN}
ORDER BY ts_rank(m.search, query) DESC, m.title, m.movie_id
LIMIT %(limit)s
"""

_CATALOGUE_LIST = f"""
SELECT m.movie_id, m.title, m.groups, 0::real AS rank
FROM {CONTROL}.movies m
WHERE {_WITHIN}
ORDER BY m.title, m.movie_id
LIMIT %(limit)s
"""


def _model_sql(*, holdings: bool, catalogue: str | None) -> str:
    """One statement: the marks, optionally a customer's holdings, optionally the catalogue's
    answer (one row per movie; one row with NULL movie when there is none)."""
    cols = [_MARKS]
    joins = []
    if holdings:
        cols.append("e.groups AS held_groups, e.movie_ids AS held_movies")
        joins.append(f"LEFT JOIN {LIVE}.customer_entitlements e ON e.customer = %(customer)s")
    order = ""
    if catalogue is not None:
        cols.append("c.movie_id, c.title, c.groups")
        joins.append(f"LEFT JOIN LATERAL ({catalogue}) AS c ON true")
        order = "ORDER BY c.rank DESC, c.title, c.movie_id"
    return f"SELECT {', '.join(cols)} FROM (SELECT 1) AS one {' '.join(joins)} {order}"


_MODEL_SQL = {
    (h, c): _model_sql(
        holdings=h,
        catalogue=None if c is None else (_CATALOGUE_LIST if c == "list" else _CATALOGUE_MATCH),
    )
    for h in (False, True)
    for c in (None, "list", "match")
}


_ENTITLEMENTS_SQL = f"""
SELECT
    e.groups,
    e.movie_ids,
    e.as_of_event,
    e.as_of_created,
    (SELECT cu.record FROM {LIVE}.customers cu WHERE cu.id = c.id) AS customer_record,
    (SELECT coalesce(jsonb_agg(s.record ORDER BY s.v_created DESC, s.id), '[]'::jsonb)
       FROM {LIVE}.subscriptions s WHERE s.customer = c.id) AS subscriptions,
    (SELECT coalesce(jsonb_agg(p.record ORDER BY p.v_created DESC, p.id), '[]'::jsonb)
       FROM {LIVE}.purchases p WHERE p.customer = c.id) AS purchases,
    (SELECT coalesce(jsonb_object_agg(pr.id, pr.record), '{{}}'::jsonb)
       FROM {LIVE}.products pr
      WHERE pr.id IN (SELECT unnest(s.refs) FROM {LIVE}.subscriptions s WHERE s.customer = c.id
                      UNION
                      SELECT unnest(p.refs) FROM {LIVE}.purchases p WHERE p.customer = c.id)
    ) AS products,
    (SELECT coalesce(jsonb_object_agg(pf.id, pf.record), '{{}}'::jsonb)
       FROM {LIVE}.product_features pf
      WHERE pf.id IN (SELECT unnest(s.refs) FROM {LIVE}.subscriptions s WHERE s.customer = c.id)
    ) AS product_features,
    (SELECT es.record FROM {LIVE}.entitlement_summaries es WHERE es.id = c.id) AS summary_record
FROM (SELECT %(customer)s::text AS id) AS c
LEFT JOIN {LIVE}.customer_entitlements e ON e.customer = c.id
"""

_CUSTOMERS_SQL = f"""
SELECT k.id, cu.record ->> 'name' AS name, cu.record ->> 'email' AS email
FROM (SELECT id FROM {LIVE}.customers
      WHERE coalesce(record ->> 'deleted', 'false') <> 'true'
      UNION
      SELECT customer FROM {LIVE}.customer_entitlements) AS k
LEFT JOIN {LIVE}.customers cu ON cu.id = k.id
ORDER BY k.id
LIMIT %(limit)s
"""

_READY_SQL = f"""
SELECT to_regclass('{CONTROL}.movies') IS NOT NULL
   AND to_regclass('{LIVE}.customer_entitlements') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = '{CONTROL}' AND tablename = 'active')
"""


@dataclass(frozen=True, slots=True)
class Hit:
    movie_id: str
    title: str
    groups: list[str]
    reason: str | None

    @property
    def available(self) -> bool:
        return self.reason is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "movie_id": self.movie_id,
            "title": self.title,
            "groups": self.groups,
            "available": self.available,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str | None
    email: str | None


# `as_of` searches (`projections.history`): what the customer held then, given, in place of
# their entitlements row now.
_LIVE_JOIN = f"LEFT JOIN {LIVE}.customer_entitlements e ON e.customer = %(customer)s"
_HELD_JOIN = (
    "CROSS JOIN (SELECT %(held_groups)s::text[] AS groups, %(held_movies)s::text[] AS movie_ids) e"
)
assert _LIVE_JOIN in MATCH_SQL and _LIVE_JOIN in LIST_SQL


def search_sql(q: str, *, held: bool = False) -> str:
    """The one statement a search runs: a full-text match, or the catalogue for a blank q;
    `held` takes the customer's rights as parameters instead of their row."""
    query = LIST_SQL if not q.strip() else MATCH_SQL
    return query.replace(_LIVE_JOIN, _HELD_JOIN) if held else query


async def search(
    conn: AsyncConnection[Any],
    customer: str,
    q: str,
    limit: int = 20,
    *,
    within: tuple[Collection[str], Collection[str]] | None = None,
    held: tuple[Collection[str], Collection[str]] | None = None,
) -> list[Hit]:
    """Movies matching `q`, best first, each marked available for `customer` or not;
    `within` (groups, movie ids) keeps only the movies in one of those groups or named;
    `held` (groups, movie ids) are the customer's rights to mark by (at a past moment)
    instead of what they hold now."""
    groups, movies = within or ((), ())
    params = {
        "held_groups": sorted(held[0]) if held else [],
        "held_movies": sorted(held[1]) if held else [],
        "q": q,
        "customer": customer,
        "limit": limit,
        "all": within is None,
        "groups": sorted(groups),
        "movies": sorted(movies),
    }
    async with conn.cursor(row_factory=class_row(Hit)) as cur:
        await cur.execute(search_sql(q, held=held is not None), params)
        return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class Marks:
    head: int  # the greatest change id
    version: int | None  # the active version
    catalog: int | None  # catalogue writes so far


@dataclass(frozen=True, slots=True)
class ModelRead:
    """What one read-model statement saw: its marks, and what was asked of holdings (None:
    not asked) and of the catalogue (None: not asked)."""

    marks: Marks
    holdings: tuple[tuple[str, ...], tuple[str, ...]] | None
    movies: list[tuple[str, str, list[str]]] | None


async def model_read(
    conn: AsyncConnection[Any],
    *,
    customer: str | None = None,
    q: str | None = None,
    limit: int = 20,
    within: tuple[Collection[str], Collection[str]] | None = None,
) -> ModelRead:
    """The marks, and `customer`'s groups and movie ids if given, and the catalogue's answer
    to `q` if given, all from one snapshot (one round trip)."""
    kind = None if q is None else ("list" if not q.strip() else "match")
    params: dict[str, Any] = {"customer": customer}
    if q is not None:
        in_groups, in_movies = within or ((), ())
        params.update(
            q=q,
            limit=limit,
            all=within is None,
            groups=sorted(in_groups),
            movies=sorted(in_movies),
        )
    cur = await conn.execute(_MODEL_SQL[(customer is not None, kind)], params)
    rows = await cur.fetchall()
    first = rows[0]
    marks = Marks(int(first[0]), first[1], first[2])
    at = 3
    holdings = None
    if customer is not None:
        holdings = (tuple(first[3] or ()), tuple(first[4] or ()))
        at = 5
    movies = None
    if q is not None:
        movies = [(r[at], r[at + 1], r[at + 2]) for r in rows if r[at] is not None]
    return ModelRead(marks, holdings, movies)


async def all_holdings(
    conn: AsyncConnection[Any], limit: int
) -> tuple[Marks, list[tuple[str, list[str], list[str]]]]:
    """Up to `limit` customers' (customer, groups, movie ids) and the marks they are current
    as of, in one snapshot (a read model warming up)."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        marks = (await model_read(conn)).marks
        cur = await conn.execute(
            f"SELECT customer, groups, movie_ids FROM {LIVE}.customer_entitlements LIMIT %s",
            (limit,),
        )
        return marks, [(c, g, m) for c, g, m in await cur.fetchall()]


async def entitlements(conn: AsyncConnection[Any], customer: str) -> dict[str, Any] | None:
    """Everything the projection knows of one customer, or None if it knows nothing."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ENTITLEMENTS_SQL, {"customer": customer})
        row = await cur.fetchone()
    assert row is not None  # the FROM is a one-row VALUES: always one row
    known = (
        row["groups"] is not None
        or row["customer_record"] is not None
        or row["subscriptions"]
        or row["purchases"]
    )
    return row if known else None


async def customers(conn: AsyncConnection[Any], limit: int = 50) -> list[Customer]:
    """Customers known to the projection (mirrored customer objects or entitlement rows)."""
    async with conn.cursor(row_factory=class_row(Customer)) as cur:
        await cur.execute(_CUSTOMERS_SQL, {"limit": limit})
        return await cur.fetchall()


async def is_ready(conn: AsyncConnection[Any]) -> bool:
    """True when the schema is migrated (the control tables and the live views exist)."""
    cur = await conn.execute(_READY_SQL)
    row = await cur.fetchone()
    return bool(row and row[0])
