"""Bulk reads and writes of mirrored rows, dedup records and entitlements.

Every write goes through COPY into a temporary staging table, then one INSERT ... ON CONFLICT
into the real table: one round trip per table, whatever the batch size.

Mirrored rows are version-guarded in SQL: an upsert never puts a snapshot over a newer one,
whatever the isolation level and whichever writer (the live worker, replay's parallel jobs)
gets there first. The fold already keeps the newest snapshot of what it loaded; the guard is
what holds when two transactions race on one object (its events can sit in two partitions: a
payment intent created before its customer was attached is keyed by its own id, its later
events by the customer).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection, pq, sql

from projections import schema as db
from projections.model.entitlements import Entitlement
from projections.model.rows import Row, customer_of, from_record, refs_of
from projections.reads import Read

__all__ = [
    "HOLDER_TABLES",
    "all_customers",
    "clean_list",
    "clean_text",
    "empty_all_staging",
    "entitlements_read",
    "holders_of",
    "in_pipeline",
    "jsonb_text",
    "load_many",
    "load_read",
    "load_rows",
    "load_targets",
    "mark_processed",
    "named_products_read",
    "put_entitlements",
    "queue_recompute",
    "read_entitlements",
    "seen",
    "seen_read",
    "take_queued",
    "targets_read",
    "text_array",
    "write_entitlements",
    "write_rows",
]

# Tables whose rows may name a customer (everything but the catalogue).
HOLDER_TABLES = tuple(
    t for t in db.MIRROR_TABLES if t not in ("products", "prices", "product_features")
)
_MIRROR_COLS = (
    "id, customer, refs, record, v_created, v_rank, v_stage, v_partition, v_offset, event_id"
)
# The coarse order of a snapshot, as the fold ranks it: a terminal snapshot first (a tombstone
# beats any update whatever its second), then Stripe's `created`, the event's rank and the
# object's lifecycle stage. Same-key ties (decided in the fold by previous_attributes or log
# order) are let through: the fold, which saw the stored row, chose.
_GUARD = (
    " WHERE (t.v_rank = 2, t.v_created, t.v_rank, t.v_stage)"
    " <= (excluded.v_rank = 2, excluded.v_created, excluded.v_rank, excluded.v_stage)"
)


# Rows this process wrote, by place (server, database, schema, table, id), with the stamp
# they were written with (event id, partition, offset). Reading a row back (the entitlement
# recomputation reads every row of the customers a batch reached, most of them just written)
# reuses the object when the table holds that very stamp, instead of decoding its record
# again. A write that rolled back or lost to a newer snapshot leaves another stamp in the
# table: that row is decoded. Rows are frozen; the bound keeps memory small.
_WRITTEN: OrderedDict[tuple[str, str, str, str], tuple[str, int, int, Row]] = OrderedDict()
_WRITTEN_MAX = 20_000


def _server(conn: AsyncConnection[Any]) -> str:
    info = conn.info
    return f"{info.host}:{info.port}/{info.dbname}"


def clean_text(value: str) -> str:
    """`value` as Postgres can store it: no U+0000, no lone surrogate (not UTF-8)."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def text_array(items: Iterable[str]) -> str:
    """`items` as a Postgres text[] literal (`{"a","b"}`), cleaned, for a COPY field: every
    element quoted, its backslashes and double quotes escaped (the array input syntax; COPY's
    own escaping is applied on top by psycopg). psycopg's list dumper costs a regular
    expression search per element: with refs, groups and movie ids on every row written it
    was ~8% of a replay. The usual list (ids, groups: nothing to clean or escape) is checked
    and joined whole; per element only when something needs it."""
    items = list(items)
    if not items:
        return "{}"
    whole = "".join(items)
    if whole.isascii() and "\x00" not in whole and "\\" not in whole and '"' not in whole:
        return '{"' + '","'.join(items) + '"}'
    return (
        "{"
        + ",".join(
            '"' + clean_text(x).replace("\\", "\\\\").replace('"', '\\"') + '"' for x in items
        )
        + "}"
    )


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def jsonb_text(record: Mapping[str, Any]) -> str:
    """`record` as jsonb text. Postgres cannot store U+0000 in jsonb (nor a lone surrogate,
    which is not UTF-8), and text a customer types can carry either; the values are cleaned
    before serialising, never the serialised text (where `\\u0000` may be six characters a
    customer typed). The common case costs one serialisation."""
    return _record_text(record)[0]


def _record_text(record: Mapping[str, Any]) -> tuple[str, bool]:
    """`jsonb_text(record)`, and whether it is `record` exactly (nothing was cleaned)."""
    try:
        text = orjson.dumps(record)
    except orjson.JSONEncodeError:  # a lone surrogate; an int beyond 64 bits stays an error
        return orjson.dumps(_clean(record)).decode(), False
    if b"\\u0000" in text:
        return orjson.dumps(_clean(record)).decode(), False
    return text.decode(), True


# Up to this many rows (or in pipeline mode, any number) a table's upsert is one statement,
# its rows bound as one jsonb array typed by the table's own row type
# (jsonb_populate_recordset): one round trip, or none of its own in a pipeline, where it
# travels with the batch's next read (`projections.store`). More rows go through COPY into a
# staging table: a round trip to create it, two for the COPY, one for the INSERT; nothing
# for a replay's thousands of rows, most of a live batch of ten (issue 21: a live batch's
# transaction made ~20 round trips).
ONE_STATEMENT_ROWS = 200


async def _staging(conn: AsyncConnection[Any], schema: str, table: str) -> sql.Identifier:
    """A temporary table shaped like `schema.table`, emptied at commit: rows are COPYed into
    it, then merged into the real table with one INSERT ... ON CONFLICT (more than
    `ONE_STATEMENT_ROWS`)."""
    tmp = sql.Identifier(f"_in_{table}")
    await conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(tmp, db.qualified(schema, table))
    )
    return tmp


async def seen(conn: AsyncConnection[Any], schema: str, ids: Sequence[str]) -> set[str]:
    """The event ids among `ids` already applied to `schema` (dedup)."""
    if not ids:
        return set()
    return await seen_read(schema, ids).run(conn)


def seen_read(schema: str, ids: Sequence[str]) -> Read[set[str]]:
    """The event ids among `ids` already applied to `schema` (dedup)."""
    return Read(
        sql.SQL("SELECT event_id FROM {} WHERE event_id = ANY(%s::text[])").format(
            db.qualified(schema, "processed_events")
        ),
        (text_array(ids),),
        _firsts,
    )


def _firsts(rows: list[Any]) -> set[str]:
    return {r[0] for r in rows}


async def load_rows(
    conn: AsyncConnection[Any], schema: str, table: str, where: str, arg: object
) -> list[Row]:
    """Rows of a mirrored table matching `where` (one `%s` placeholder, bound to `arg`)."""
    return [row for _t, row in await load_many(conn, schema, [(table, arg)], where)]


async def load_many(
    conn: AsyncConnection[Any], schema: str, wanted: Sequence[tuple[str, object]], where: str
) -> list[tuple[str, Row]]:
    """(table, row) of the rows of several mirrored tables matching `where` (`load_read`)."""
    if not wanted:
        return []
    return await load_read(conn, schema, wanted, where).run(conn)


def load_read(
    conn: AsyncConnection[Any], schema: str, wanted: Sequence[tuple[str, object]], where: str
) -> Read[list[tuple[str, Row]]]:
    """(table, row) of the rows of several mirrored tables (`wanted` not empty) matching
    `where` (one `%s` placeholder, bound to each table's own argument), in one statement.
    Records come back as text and are parsed by orjson (psycopg's jsonb loader is the
    standard library's)."""
    # one parameter per distinct argument (gather_facts passes one list of customers for ten
    # tables), a list of ids as one text[] literal
    names: dict[int, str] = {}
    params: dict[str, object] = {}
    parts = []
    for table, arg in wanted:
        name = names.setdefault(id(arg), f"p{len(names)}")
        literal = _ids_literal(arg)
        params[name] = arg if literal is None else literal
        placeholder = f"%({name})s" + ("" if literal is None else "::text[]")
        parts.append(
            sql.SQL(_SELECT_ROW + " WHERE " + where.replace("%s", placeholder)).format(
                sql.Literal(table), db.qualified(schema, table)
            )
        )
    return Read(sql.SQL(" UNION ALL ").join(parts), params, _decoder(conn, schema))


_SELECT_ROW = "SELECT {}::text, id, event_id, v_partition, v_offset, record::text FROM {}"


def _decoder(
    conn: AsyncConnection[Any], schema: str
) -> Callable[[list[Any]], list[tuple[str, Row]]]:
    """Reads `_SELECT_ROW`'s rows: (table, row), a row this process wrote reused as it is."""
    server = _server(conn)

    def decode(rows: list[Any]) -> list[tuple[str, Row]]:
        out = []
        for table, ident, event_id, partition, offset, record in rows:
            known = _WRITTEN.get((server, schema, table, ident))
            if known is not None and known[:3] == (event_id, partition, offset):
                out.append((table, known[3]))
            else:
                out.append((table, from_record(table, orjson.loads(record))))
        return out

    return decode


def named_products_read(
    conn: AsyncConnection[Any], schema: str, customers: Sequence[str]
) -> Read[tuple[set[str], list[tuple[str, Row]]]]:
    """The ids `customers`' subscriptions and purchases name (their refs: products, payment
    intents), and the products and product features among them: the catalogue their
    entitlements read, in a statement that does not wait for their rows to be read first
    (`recompute.gather_facts`)."""
    named = sql.SQL(
        "WITH named AS (SELECT unnest(refs) AS id FROM {s} WHERE customer = ANY(%(c)s::text[])"
        " UNION SELECT unnest(refs) FROM {p} WHERE customer = ANY(%(c)s::text[]))"
        " SELECT NULL::text, id, NULL, NULL, NULL, NULL FROM named"
    ).format(s=db.qualified(schema, "subscriptions"), p=db.qualified(schema, "purchases"))
    parts = [named] + [
        sql.SQL(_SELECT_ROW + " WHERE id IN (SELECT id FROM named)").format(
            sql.Literal(table), db.qualified(schema, table)
        )
        for table in ("products", "product_features")
    ]
    rows = _decoder(conn, schema)

    def decode(found: list[Any]) -> tuple[set[str], list[tuple[str, Row]]]:
        asked = {r[1] for r in found if r[0] is None}
        return asked, rows([r for r in found if r[0] is not None])

    return Read(sql.SQL(" UNION ALL ").join(parts), {"c": text_array(customers)}, decode)


def _ids_literal(arg: object) -> str | None:
    """A list of strings as a text[] literal (`text_array`), else None (bound as it is)."""
    if isinstance(arg, list) and all(isinstance(x, str) for x in arg):
        return text_array(arg)
    return None


async def load_targets(
    conn: AsyncConnection[Any], schema: str, targets: Mapping[str, Sequence[str]]
) -> dict[tuple[str, str], Row]:
    """The stored rows of `targets` (table -> object ids), keyed by (table, id)."""
    if not targets:
        return {}
    return await targets_read(conn, schema, targets).run(conn)


def targets_read(
    conn: AsyncConnection[Any], schema: str, targets: Mapping[str, Sequence[str]]
) -> Read[dict[tuple[str, str], Row]]:
    """The stored rows of `targets` (table -> object ids; not empty), keyed by (table, id)."""
    wanted = [(table, list(ids)) for table, ids in targets.items()]
    read = load_read(conn, schema, wanted, "id = ANY(%s)")

    def decode(rows: list[Any]) -> dict[tuple[str, str], Row]:
        return {(t, row.id): row for t, row in read.decode(rows)}

    return Read(read.query, read.params, decode)


async def holders_of(
    conn: AsyncConnection[Any], schema: str, links: Sequence[str]
) -> list[tuple[str | None, list[str]]]:
    """(customer, refs) of every holder row whose id is one of `links` or that points at one
    (recompute follows the rows that name no customer through their refs); refs are empty
    for a row that names its customer: nothing follows them, and a regroup reaches every
    subscriber of the package (~50,000 rows in a log of 1M events: their refs were most of
    what a build held at that moment)."""
    q = sql.SQL(" UNION ALL ").join(
        sql.SQL(
            "SELECT customer, CASE WHEN customer IS NULL THEN refs END FROM {}"
            " WHERE refs && %(links)s::text[] OR id = ANY(%(links)s::text[])"
        ).format(db.qualified(schema, t))
        for t in HOLDER_TABLES
    )
    cur = await conn.execute(q, {"links": text_array(links)})
    return [(c, [] if r is None else list(r)) for c, r in await cur.fetchall()]


async def all_customers(conn: AsyncConnection[Any], schema: str) -> list[str]:
    """Every customer some mirrored row of `schema` names, sorted."""
    cur = await conn.execute(
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT customer FROM {} WHERE customer IS NOT NULL").format(
                db.qualified(schema, t)
            )
            for t in HOLDER_TABLES
        )
    )
    return sorted(r[0] for r in await cur.fetchall())


async def queue_recompute(
    conn: AsyncConnection[Any],
    schema: str,
    customers: Iterable[str],
    event_id: str | None,
    event_type: str | None,
) -> None:
    """Queue `customers` for a later recompute (`take_queued`), each with the event that
    reached them; a customer already queued stays queued once (with the newer event)."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (customer, event_id, event_type)"
            " SELECT c, %s, %s FROM unnest(%s::text[]) AS c"
            " ON CONFLICT (customer) DO UPDATE SET event_id = excluded.event_id,"
            " event_type = excluded.event_type"
        ).format(db.qualified(schema, "recompute_queue")),
        (event_id, event_type, text_array(sorted(customers))),
    )


async def take_queued(
    conn: AsyncConnection[Any], schema: str, limit: int
) -> list[tuple[str, str | None, str | None]]:
    """Take (delete and return) up to `limit` queued customers with their events, skipping
    those another transaction is taking: concurrent writers share the queue. The caller
    recomputes them in the same transaction, so a rollback queues them again."""
    cur = await conn.execute(
        sql.SQL(
            "DELETE FROM {q} WHERE customer IN (SELECT customer FROM {q} ORDER BY customer"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING customer, event_id, event_type"
        ).format(q=db.qualified(schema, "recompute_queue")),
        (limit,),
    )
    return [(c, e, t) for c, e, t in await cur.fetchall()]


async def write_rows(
    conn: AsyncConnection[Any], schema: str, changed: Mapping[tuple[str, str], Row]
) -> None:
    """Upsert the changed mirrored rows, table by table, guarded by their stamps."""
    by_table: dict[str, list[Row]] = defaultdict(list)
    for (table, _id), row in changed.items():
        by_table[table].append(row)
    for table, rows in by_table.items():
        await _upsert_rows(conn, schema, table, rows)


def in_pipeline(conn: AsyncConnection[Any]) -> bool:
    """True when `conn` is in pipeline mode (`projections.reads`), where COPY cannot run."""
    return bool(conn.pgconn.pipeline_status != pq.PipelineStatus.OFF)


_MIRROR_NAMES = tuple(_MIRROR_COLS.split(", "))
_MIRROR_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in _MIRROR_NAMES[1:])


async def _upsert_rows(
    conn: AsyncConnection[Any], schema: str, table: str, rows: Sequence[Row]
) -> None:
    server = _server(conn)
    fields = [_mirror_fields(server, schema, table, row) for row in rows]
    target = db.qualified(schema, table)
    upsert = " ON CONFLICT (id) DO UPDATE SET " + _MIRROR_UPDATES + _GUARD
    if len(fields) <= ONE_STATEMENT_ROWS or in_pipeline(conn):
        doc = [dict(zip(_MIRROR_NAMES, f, strict=True)) for f in fields]
        for d in doc:
            d["record"] = orjson.Fragment(d["record"])  # already JSON: not serialised again
        await conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS t (" + _MIRROR_COLS + ") SELECT " + _MIRROR_COLS
                + " FROM jsonb_populate_recordset(NULL::{t}, %s::jsonb)" + upsert
            ).format(t=target),
            (orjson.dumps(doc).decode(),),
        )  # fmt: skip
        return
    tmp = await _staging(conn, schema, table)
    async with conn.cursor() as cur:
        async with cur.copy(sql.SQL("COPY {} (" + _MIRROR_COLS + ") FROM STDIN").format(tmp)) as cp:
            for ident, customer, refs, *rest in fields:
                await cp.write_row((ident, customer, text_array(refs), *rest))
        # the staging rows are taken out as they are merged: several writes of one table in
        # one transaction (a build's waves, recompute_all's chunks) each see their own only
        await cur.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {tmp} RETURNING " + _MIRROR_COLS + ")"
                " INSERT INTO {t} AS t (" + _MIRROR_COLS + ") SELECT " + _MIRROR_COLS
                + " FROM moved" + upsert
            ).format(t=target, tmp=tmp)
        )  # fmt: skip


def _mirror_fields(server: str, schema: str, table: str, row: Row) -> tuple[Any, ...]:
    """`row`'s columns (`_MIRROR_COLS`) as Postgres can store them: text cleaned, refs a
    list, the record as JSON text; remembered in `_WRITTEN` when its record is exact."""
    s = row.stamp
    customer = customer_of(row)
    ident, event_id = clean_text(row.id), clean_text(row.event_id)
    text, exact = _record_text(row.to_record())
    if exact and ident == row.id and event_id == row.event_id:
        place = (server, schema, table, ident)  # its record decodes to `row`
        _WRITTEN[place] = (event_id, s.partition, s.offset, row)
        _WRITTEN.move_to_end(place)
        if len(_WRITTEN) > _WRITTEN_MAX:
            _WRITTEN.popitem(last=False)
    return (
        ident,
        None if customer is None else clean_text(customer),
        clean_list(refs_of(row)),
        text,
        s.created,
        s.rank,
        s.stage,
        s.partition,
        s.offset,
        event_id,
    )


def clean_list(items: Iterable[str]) -> list[str]:
    """`items`, each `clean_text`ed (checked whole first: the usual list needs nothing)."""
    items = list(items)
    whole = "".join(items)
    if whole.isascii() and "\x00" not in whole:
        return items
    return [clean_text(x) for x in items]


async def mark_processed(
    conn: AsyncConnection[Any], schema: str, applied: Iterable[tuple[str, int, int]]
) -> None:
    """Record applied events (id, partition, offset) for dedup; ids unique within the call.

    `ON CONFLICT DO NOTHING` (issue 19, point 7): one event id can sit in two partitions (a
    redelivery keyed otherwise), and replay's parallel READ COMMITTED jobs may both fold it;
    a unique violation there was dead-lettered in the build only, so replay != live."""
    rows = list(applied)
    if not rows:
        return
    await conn.execute(
        sql.SQL(
            'INSERT INTO {} (event_id, partition, "offset")'
            " SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])"
            " ON CONFLICT (event_id) DO NOTHING"
        ).format(db.qualified(schema, "processed_events")),
        (
            text_array(e for e, _, _ in rows),
            "{" + ",".join(str(p) for _, p, _ in rows) + "}",
            "{" + ",".join(str(o) for _, _, o in rows) + "}",
        ),
    )


async def lock_keys(conn: AsyncConnection[Any], keys: Iterable[str]) -> None:
    """Hold a transaction advisory lock on each key (taken in one order: no deadlock).

    Replay's parallel bulk jobs run in READ COMMITTED and do not assume they write disjoint
    rows (issue 19, point 7: a payment intent keyed first by its own id, then by its
    customer, is written from two partitions): each job locks the rows its batch writes and
    the event ids it applies BEFORE reading them, so it reads what another job committed and
    settles same-second rivals and sticky fields over both, as one job would."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    await conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM"
        " (SELECT DISTINCT hashtextextended(k, 19) AS h FROM unnest(%s::text[]) AS k"
        " ORDER BY h) AS locks",
        (wanted,),
    )


async def write_entitlements(
    conn: AsyncConnection[Any],
    schema: str,
    derived: Mapping[str, tuple[Entitlement, Row | None]],
) -> dict[str, Entitlement]:
    """Upsert customers' entitlements, each with the newest row it was derived from; what
    they held before (customers new to the table are absent), read by the same statement."""
    held = await _write_entitlements(conn, schema, derived, before=True)
    assert held is not None
    return held


async def put_entitlements(
    conn: AsyncConnection[Any],
    schema: str,
    derived: Mapping[str, tuple[Entitlement, Row | None]],
) -> None:
    """`write_entitlements` without reading what they held (read earlier in the
    transaction: `entitlements_read`): nothing to wait for, so in a pipelined transaction
    it travels with the transaction's last statements (`projections.reads`)."""
    await _write_entitlements(conn, schema, derived, before=False)


async def _write_entitlements(
    conn: AsyncConnection[Any],
    schema: str,
    derived: Mapping[str, tuple[Entitlement, Row | None]],
    *,
    before: bool,
) -> dict[str, Entitlement] | None:
    table = db.qualified(schema, "customer_entitlements")
    cols = "customer, groups, movie_ids, as_of_event, as_of_created"
    rows = [
        (
            clean_text(customer),
            clean_list(ent.groups),
            clean_list(ent.movie_ids),
            None if newest is None else clean_text(newest.event_id),
            None if newest is None else newest.stamp.created,
        )
        for customer, (ent, newest) in derived.items()
    ]
    # `old` reads the table as it was before this statement (one snapshot for all of it).
    # By the customers' ids, not by a join with the new rows: a temporary table has no
    # statistics, so the planner hashed the whole table for every batch (its cost grew with
    # the customers: the growth curve of issue 21).
    upsert = (
        "WITH {old} {rows}"
        " up AS (INSERT INTO {table} (" + cols + ") SELECT " + cols + " FROM {source}"
        " ON CONFLICT (customer) DO UPDATE SET groups = excluded.groups,"
        " movie_ids = excluded.movie_ids, as_of_event = excluded.as_of_event,"
        " as_of_created = excluded.as_of_created, updated_at = now() RETURNING 1)"
        + (" SELECT customer, groups, movie_ids FROM old" if before else " SELECT 1")
    )
    old = sql.SQL(
        "old AS (SELECT e.customer, e.groups, e.movie_ids FROM {} e"
        " WHERE e.customer = ANY(%s::text[])),"
    ).format(table)
    params: list[Any] = [text_array(r[0] for r in rows)] if before else []
    async with conn.cursor() as cur:
        if len(rows) <= ONE_STATEMENT_ROWS or in_pipeline(conn):  # see ONE_STATEMENT_ROWS
            names = cols.split(", ")
            params.append(orjson.dumps([dict(zip(names, r, strict=True)) for r in rows]).decode())
            await cur.execute(
                sql.SQL(upsert).format(
                    old=old if before else sql.SQL(""),
                    table=table,
                    rows=sql.SQL(""),
                    source=sql.SQL("jsonb_populate_recordset(NULL::{}, %s::jsonb)").format(table),
                ),
                params,
            )
        else:
            tmp = await _staging(conn, schema, "customer_entitlements")
            async with cur.copy(sql.SQL("COPY {} (" + cols + ") FROM STDIN").format(tmp)) as cp:
                for customer, groups, movie_ids, *rest in rows:
                    await cp.write_row((customer, text_array(groups), text_array(movie_ids), *rest))
            # taken out of the staging table as merged (see `_upsert_rows`)
            await cur.execute(
                sql.SQL(upsert).format(
                    old=old if before else sql.SQL(""),
                    table=table,
                    rows=sql.SQL("moved AS (DELETE FROM {} RETURNING " + cols + "),").format(tmp),
                    source=sql.SQL("moved"),
                ),
                params,
            )
        if not before:
            return None
        return {c: Entitlement(tuple(g), tuple(m)) for c, g, m in await cur.fetchall()}


async def read_entitlements(
    conn: AsyncConnection[Any], schema: str, customers: Sequence[str]
) -> dict[str, Entitlement]:
    """What `customers` hold in `schema` (customers absent from the table are absent)."""
    return await entitlements_read(schema, customers).run(conn)


def entitlements_read(schema: str, customers: Sequence[str]) -> Read[dict[str, Entitlement]]:
    """What `customers` hold in `schema` (customers absent from the table are absent)."""
    return Read(
        sql.SQL(
            "SELECT customer, groups, movie_ids FROM {} WHERE customer = ANY(%s::text[])"
        ).format(db.qualified(schema, "customer_entitlements")),
        (text_array(customers),),  # cleaned as `write_entitlements` wrote them
        _entitlements,
    )


def _entitlements(rows: list[Any]) -> dict[str, Entitlement]:
    return {c: Entitlement(tuple(g), tuple(m)) for c, g, m in rows}


async def empty_all_staging(conn: AsyncConnection[Any]) -> None:
    """Empty every staging table of this session (between the waves of one transaction)."""
    cur = await conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
        " AND relkind = 'r' AND relname LIKE '\\_in\\_%%'"
    )
    names = [sql.Identifier(r[0]) for r in await cur.fetchall()]
    if names:
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(names)))
