"""The Postgres schema: a control schema, one schema per projection version, and `live` views.

- `entitled` holds what is not derived from the log: the catalogue (`movies`), the list of
  projection versions and which one is active.
- `entitled_v<N>` holds one complete projection version: the mirrored Stripe objects, the
  per-customer entitlements, the checkpoints of the offsets folded into it, the ids of the
  events applied (dedup) and the dead letters. Replay builds a new one beside the live one.
- `live` holds one view per projection table, pointing at the active version. Readers only
  ever query `live.*`, so a version swap (redefining the views in one transaction) is atomic
  for them: no reader sees a half-built table or fails.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from projections.reads import Read

CONTROL = "entitled"
LIVE = "live"

# Mirrored Stripe objects: one generic shape, so one writer serves every table. `record` is
# the row's lossless JSON form (rows.to_record()); `customer` and `refs` (ids the row points
# at: products, payment intents, charges, invoices) are the two lookups entitlement
# derivation needs; v_* is the row's Stamp.
MIRROR_TABLES = (
    "products",
    "prices",
    "customers",
    "subscriptions",
    "purchases",
    "charges",
    "refunds",
    "disputes",
    "invoice_payments",
    "product_features",
    "entitlement_summaries",
)

# One customer's entitlements before and after one cause: the columns the change feed
# (control.changes) and each version's history share.
_DELTA_COLUMNS = """\
    customer      text NOT NULL,
    groups_before text[] NOT NULL,
    groups_after  text[] NOT NULL,
    movies_before text[] NOT NULL,
    movies_after  text[] NOT NULL,
    cause         text NOT NULL,
    event_id      text,
"""

_CONTROL_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {CONTROL};
CREATE SCHEMA IF NOT EXISTS {LIVE};
CREATE TABLE IF NOT EXISTS {CONTROL}.versions (
    version     integer PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    state       text NOT NULL CHECK (state IN ('building', 'ready', 'active', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    note        text
);
CREATE TABLE IF NOT EXISTS {CONTROL}.active (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL REFERENCES {CONTROL}.versions (version)
);
CREATE TABLE IF NOT EXISTS {CONTROL}.catalog_mark (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    writes    bigint NOT NULL DEFAULT 0
);
INSERT INTO {CONTROL}.catalog_mark DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {CONTROL}.movies (
    movie_id   text PRIMARY KEY,
    title      text NOT NULL,
    keywords   text NOT NULL DEFAULT '',
    groups     text[] NOT NULL DEFAULT '{{}}',
    search     tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', keywords), 'B')
    ) STORED,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS movies_search_idx ON {CONTROL}.movies USING gin (search);
CREATE INDEX IF NOT EXISTS movies_groups_idx ON {CONTROL}.movies USING gin (groups);
CREATE INDEX IF NOT EXISTS movies_title_idx ON {CONTROL}.movies (title, movie_id);
CREATE SEQUENCE IF NOT EXISTS {CONTROL}.change_ids;
CREATE TABLE IF NOT EXISTS {CONTROL}.changes (
    id            bigint PRIMARY KEY,
{_DELTA_COLUMNS}    event_created bigint,
    version       integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS changes_unpublished_idx ON {CONTROL}.changes (id)
    WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS changes_customer_idx ON {CONTROL}.changes (customer, id);
CREATE TABLE IF NOT EXISTS {CONTROL}.erasures (
    id           bigserial PRIMARY KEY,
    customer     text NOT NULL,
    subjects     text[] NOT NULL,
    keys         integer NOT NULL,
    requested_by text NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {CONTROL}.erased_keys (
    key_id    text PRIMARY KEY,
    erasure   bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {CONTROL}.erasure_epoch (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch bigint NOT NULL DEFAULT 0
);
INSERT INTO {CONTROL}.erasure_epoch (one) VALUES (true) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {CONTROL}.worker_members (
    consumer_group text NOT NULL,
    instance_id    text NOT NULL,
    member_id      text NOT NULL DEFAULT '',
    host           text NOT NULL,
    pid            integer NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, instance_id)
)
"""

_MIRROR_DDL = """
CREATE TABLE {schema}.{table} (
    id          text PRIMARY KEY,
    customer    text,
    refs        text[] NOT NULL DEFAULT '{{}}',
    record      jsonb NOT NULL,
    v_created   bigint NOT NULL,
    v_rank      smallint NOT NULL,
    v_stage     bigint NOT NULL DEFAULT 0,
    v_partition integer NOT NULL,
    v_offset    bigint NOT NULL,
    event_id    text NOT NULL
)
"""

_MIRROR_INDEXES = """
CREATE INDEX ON {schema}.{table} (customer);
CREATE INDEX ON {schema}.{table} USING gin (refs)
"""

_VERSION_DDL = """
CREATE TABLE {schema}.customer_entitlements (
    customer      text PRIMARY KEY,
    groups        text[] NOT NULL,
    movie_ids     text[] NOT NULL,
    as_of_event   text,
    as_of_created bigint,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {schema}.checkpoints (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
CREATE TABLE {schema}.processed_events (
    event_id  text PRIMARY KEY,
    partition integer NOT NULL,
    "offset"  bigint NOT NULL
);
CREATE TABLE {schema}.dead_letters (
    id          bigserial PRIMARY KEY,
    key         text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    event_id    text,
    event_type  text,
    state       text NOT NULL CHECK (state IN ('poison', 'parked', 'applied', 'skipped')),
    error       text,
    traceback   text,
    raw         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX ON {schema}.dead_letters (key) WHERE state IN ('poison', 'parked');
"""

# The version's history (`projections.history`): one row per change of a customer's
# entitlements in this version, from the first event of the log (a replay's build records it
# too), with the event behind it and why each group and movie was held after it (`grants`).
# It lives in the version (a rebuild from other rules has another history) and names the
# customer, so erasure's per-version delete reaches it.
_HISTORY_DDL = (
    """
CREATE TABLE {schema}.history (
    id            bigserial PRIMARY KEY,
"""
    + _DELTA_COLUMNS
    + """    event_type    text,
    event_created bigint,
    grants        jsonb NOT NULL DEFAULT '{{}}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {schema}.history (customer, id)
"""
)

# Subscribers of a regrouped product still to recompute (issue 19, point 5): past the
# writer's bound (`ENTITLED_REGROUP_CHUNK`) the batch that folded the product queues them
# here and they are recomputed in transactions of at most that many (`recompute.settle`), so
# no transaction grows with the number of subscribers. Names customers: erasure deletes here.
_QUEUE_DDL = """
CREATE TABLE {schema}.recompute_queue (
    customer   text PRIMARY KEY,
    event_id   text,
    event_type text,
    queued_at  timestamptz NOT NULL DEFAULT now()
)
"""

LIVE_VIEWS = (
    *MIRROR_TABLES,
    "customer_entitlements",
    "checkpoints",
    "processed_events",
    "dead_letters",
    "history",
)


# Columns a release adds to mirrored tables, computed by Postgres from `record` (generated,
# stored): the expand step of expand/contract (docs/operations.md, Rolling upgrades). A
# release's module registers them (`add_column`) before `migrate` runs; `migrate` adds them to
# the active version while the old workers write it (their writes fill the column too), a
# new version is created with them, and a swap adds them to a version built by an older
# release. table -> [(column, definition)].
_ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {}


def add_column(table: str, column: str, definition: str) -> None:
    """Register `column` (`definition`: its SQL type and generation clause, trusted code of
    a release such as `text GENERATED ALWAYS AS (record->>'name') STORED`) on the mirrored
    `table` of every version."""
    if table not in MIRROR_TABLES:
        raise ValueError(f"{table!r} is not a mirrored table")
    columns = _ADDED_COLUMNS.setdefault(table, [])
    if (column, definition) not in columns:
        columns.append((column, definition))


async def _add_columns(conn: AsyncConnection[object], schema: str, *, served: bool) -> None:
    """Add the registered columns `schema`'s tables lack (`served`: the `live` views may
    read them, and are about to be re-pointed). Nothing is locked when none is missing."""
    for table, columns in _ADDED_COLUMNS.items():
        cur = await conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0",
            (f'"{schema}"."{table}"',),
        )
        present = {str(r[0]) for r in await cur.fetchall()}  # type: ignore[index]
        missing = [(c, d) for c, d in columns if c not in present]
        if not missing:
            continue
        async with conn.transaction():  # a savepoint, or a transaction when autocommit
            cur = await conn.execute("SELECT to_regclass(%s)", (f'"{LIVE}"."{table}"',))
            row = await cur.fetchone()
            if served and row is not None and row[0] is not None:  # type: ignore[index]
                # the view first, as every reader locks it (view, then table): taking the
                # table first would deadlock with a search waiting for it holding the view
                await conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                        sql.Identifier(LIVE, table)
                    )
                )
            for column, definition in missing:
                await conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        sql.Identifier(schema, table), sql.Identifier(column), sql.SQL(definition)
                    )
                )


def version_schema(version: int) -> str:
    return f"entitled_v{version}"


def _statements(template: str, **names: str) -> list[sql.Composed]:
    idents = {k: sql.Identifier(v) for k, v in names.items()}
    return [sql.SQL(part.strip()).format(**idents) for part in template.split(";") if part.strip()]


async def create_version_schema(
    conn: AsyncConnection[object], version: int, *, indexes: bool = True
) -> str:
    """Create the empty tables of one projection version; `indexes=False` defers the
    secondary indexes (replay loads first and builds them after, which is much faster)."""
    schema = version_schema(version)
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    for table in MIRROR_TABLES:
        for stmt in _statements(_MIRROR_DDL, schema=schema, table=table):
            await conn.execute(stmt)
    for stmt in _statements(_VERSION_DDL + ";" + _HISTORY_DDL + ";" + _QUEUE_DDL, schema=schema):
        await conn.execute(stmt)
    await _add_columns(conn, schema, served=False)
    if indexes:
        await create_secondary_indexes(conn, schema)
    return schema


async def create_secondary_indexes(conn: AsyncConnection[object], schema: str) -> None:
    for table in MIRROR_TABLES:
        for stmt in _statements(_MIRROR_INDEXES, schema=schema, table=table):
            await conn.execute(stmt)


async def _add_missing_mirror_tables(conn: AsyncConnection[object], schema: str) -> None:
    """Create the mirrored tables a release added that `schema` (built by an older release)
    lacks, empty: that version's log never reached them, and its views must exist. The same
    for its history (a version built before history was recorded has none) and its
    recompute queue."""
    wanted = [(t, (_MIRROR_DDL, _MIRROR_INDEXES)) for t in MIRROR_TABLES]
    extra = [("history", (_HISTORY_DDL,)), ("recompute_queue", (_QUEUE_DDL,))]
    for table, templates in [*wanted, *extra]:
        cur = await conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',))
        row = await cur.fetchone()
        if row is not None and row[0] is None:  # type: ignore[index]
            for template in templates:
                for stmt in _statements(template, schema=schema, table=table):
                    await conn.execute(stmt)


async def point_live_views(conn: AsyncConnection[object], schema: str) -> None:
    """Redefine every `live` view to read `schema`. Call inside the swapping transaction.

    `CREATE OR REPLACE` keeps each view's identity, so a search that is waiting for the
    swap's lock reads the new version afterwards instead of failing on a dropped view. Only
    when the columns changed (a version from another release) is a view dropped and made anew.
    """
    await _add_missing_mirror_tables(conn, schema)
    await _add_columns(conn, schema, served=True)
    for view in LIVE_VIEWS:
        target = sql.Identifier(LIVE, view)
        source = sql.Identifier(schema, view)
        try:
            async with conn.transaction():  # a savepoint: a failed replace leaves no trace
                await conn.execute(
                    sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(target, source)
                )
        except psycopg.errors.InvalidTableDefinition:
            await conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(target))
            await conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(target, source))


async def migrate(conn: AsyncConnection[object]) -> str:
    """Create the control schema and, on a fresh database, version 1 as the active version.

    Idempotent and safe to run from several processes at once (an advisory lock serialises
    them). Returns the active version's schema name. The caller commits.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('entitled.migrate'))")
    for stmt in _CONTROL_DDL.split(";"):
        if stmt.strip():
            await conn.execute(stmt)
    cur = await conn.execute(
        f"SELECT v.schema_name FROM {CONTROL}.active a JOIN {CONTROL}.versions v USING (version)"
    )
    row = await cur.fetchone()
    if row is not None:
        # Re-point the views: a newer release may have added one.
        await point_live_views(conn, str(row[0]))  # type: ignore[index]
        return str(row[0])  # type: ignore[index]
    schema = await create_version_schema(conn, 1)
    await conn.execute(
        f"INSERT INTO {CONTROL}.versions (version, schema_name, state, activated_at)"
        " VALUES (1, %s, 'active', now())",
        (schema,),
    )
    await conn.execute(f"INSERT INTO {CONTROL}.active (version) VALUES (1)")
    await point_live_views(conn, schema)
    return schema


def active_read(*, lock: bool = False) -> Read[str]:
    """The active version's schema. `lock=True` takes a share lock on the active row, so a
    concurrent swap waits until this transaction ends (and vice versa)."""
    query = (
        f"SELECT v.schema_name FROM {CONTROL}.active a JOIN {CONTROL}.versions v USING (version)"
        + (" FOR SHARE OF a" if lock else "")
    )
    return Read(query, None, _active_name)


def _active_name(rows: list[Any]) -> str:
    if not rows:
        raise LookupError("no active projection version: run `entitled migrate`")
    return str(rows[0][0])


async def active_schema(conn: AsyncConnection[object], *, lock: bool = False) -> str:
    """The active version's schema (`active_read`)."""
    return await active_read(lock=lock).run(conn)


def qualified(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)
