"""Forgetting a customer in Postgres: who is linked to them, and deleting all of it.

A customer's data is keyed in the log by more than their id: a payment intent made before
the customer was attached is keyed by its own id, and so are refunds and disputes (Stripe
puts no customer on them). `linked_subjects` follows the mirrored rows of every projection
version from the customer to those ids (their rows' `customer`, the payment intents of their
purchases and charges, the rows that point at those: refunds, disputes, invoice payments)
and adds the keys of dead letters whose raw event names the customer. Those are the subjects
whose data keys the caller deletes (`entitled.keyring`): this module holds only the SQL.

`erase` then deletes, in one transaction, in every version: the rows of those subjects, the
customer's entitlements and history, the dead letters of those subjects (or naming the
customer), the customer's change rows; it writes one change (cause `forget`: everything
taken away; no history row), the erasure record (customer id, subjects, when, who asked:
no personal data) and the ids of the deleted data keys (`erased_keys`: random ids).

Why the fold cannot bring them back, however late a process reads the keys topic: every
transaction that folds records (`screen`, called by the writer first) share-locks the
single row `erasure_epoch` and then treats as forgotten a record whose key id is in
`erased_keys`, whatever its own keyring still holds, and a record about one of an erasure's
subjects (its message key) created before the erasure's time (`erased_at`, the time the
keys topic's forget marks carry too): an event written after the forget by a writer that
had not seen it, or one Stripe sent before the forget that reached the log after it
(reconcile, a late retry, a snapshot read before it), sealed with a key made since. A
later event about them (created after that time) folds like a first event. `erase` updates
that row first, so it waits for every fold transaction already past its `screen`, deletes
what they wrote, and commits the key ids; a fold transaction that reaches `screen` later
either sees them (it began after the commit) or, when its snapshot is older (SERIALIZABLE),
fails to lock the updated row with a serialization failure, which the caller retries like
any other. No timing, any number of workers and replays: correctness rests on Postgres's
locks, not on a wait.

`forget` is the whole order of it: link, delete the keys (the caller's `shred`), then erase.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from psycopg import AsyncConnection, sql

from entitled import bodies
from projections import changes
from projections import schema as db
from projections.model.entitlements import Entitlement
from projections.reads import Read
from projections.types import Message

__all__ = [
    "Erased",
    "ErasedKeys",
    "epoch_read",
    "erase",
    "erasures",
    "forget",
    "leftovers",
    "linked_subjects",
    "screen",
    "screen_at",
]

# Mirrored tables that can concern a customer; products, prices and product features never do.
_LINKED = tuple(t for t in db.MIRROR_TABLES if t not in ("products", "prices", "product_features"))
# What a row points at that is itself keyed by its own id in the log (never a product)
_POINTS_AT = {
    "purchases": "ARRAY[record->>'payment_intent']",
    "charges": "refs",
    "refunds": "refs",
    "disputes": "refs",
    "invoice_payments": "refs",
}


@dataclass(frozen=True)
class Erased:
    customer: str
    subjects: tuple[str, ...]
    keys: int  # data keys deleted
    rows: int  # rows deleted, every version and table together
    versions: int


async def _schemas(conn: AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(f"SELECT schema_name FROM {db.CONTROL}.versions ORDER BY version")
    names = [str(r[0]) for r in await cur.fetchall()]
    present = []
    for name in names:  # a dropped version's row may outlive its schema briefly
        cur = await conn.execute("SELECT to_regnamespace(%s)", (name,))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            present.append(name)
    return present


async def linked_subjects(conn: AsyncConnection[Any], customer: str) -> list[str]:
    """The customer and every id the projection links to them, in any version."""
    subjects = {customer}
    needle = customer.encode()
    for schema in await _schemas(conn):
        for _ in range(6):  # customer -> sessions -> payment intents -> refunds: a few hops
            before = len(subjects)
            wanted = sorted(subjects)
            for table in _LINKED:
                points = _POINTS_AT.get(table, "'{{}}'::text[]")  # braces: sql.SQL's
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT id, " + points + " FROM {} WHERE customer = %(c)s"
                        " OR id = ANY(%(s)s) OR refs && %(s)s::text[]"
                    ).format(db.qualified(schema, table)),
                    {"c": customer, "s": wanted},
                )
                for row_id, pointed in await cur.fetchall():
                    subjects.add(str(row_id))
                    subjects.update(str(p) for p in pointed or () if p)
            if len(subjects) == before:
                break
        cur = await conn.execute(
            sql.SQL("SELECT DISTINCT key FROM {} WHERE position(%s IN raw) > 0").format(
                db.qualified(schema, "dead_letters")
            ),
            (needle,),
        )
        subjects.update(str(r[0]) for r in await cur.fetchall())
    return sorted(subjects)


async def erase(
    conn: AsyncConnection[Any],
    customer: str,
    subjects: Sequence[str],
    *,
    key_ids: Sequence[str],
    requested_by: str,
    at: float | None = None,
) -> Erased:
    """Delete what every version holds of `customer` and `subjects`, publish the `forget`
    change, record the erasure (as of `at`, Unix seconds: the time of the keys topic's
    forget marks; default now) and the deleted data keys `key_ids`; the caller commits (one
    transaction) and has called `hold_folds` in it first."""
    wanted = sorted({customer, *subjects})
    live = await db.active_schema(conn, lock=True)
    held = await _entitlement(conn, live, customer)
    schemas = await _schemas(conn)
    rows = 0
    for schema in schemas:
        for table in _LINKED:
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer = %s OR id = ANY(%s)").format(
                    db.qualified(schema, table)
                ),
                (customer, wanted),
            )
            rows += cur.rowcount
        for table in ("customer_entitlements", *await _customer_tables(conn, schema)):
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer = %s").format(db.qualified(schema, table)),
                (customer,),
            )
            rows += cur.rowcount
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} WHERE key = ANY(%s) OR position(%s IN raw) > 0").format(
                db.qualified(schema, "dead_letters")
            ),
            (wanted, customer.encode()),
        )
        rows += cur.rowcount
    cur = await conn.execute(f"DELETE FROM {db.CONTROL}.changes WHERE customer = %s", (customer,))
    rows += cur.rowcount
    nothing = Entitlement((), ())
    # announced on the feed, but no history row: the version keeps nothing of them
    await changes.record(
        conn,
        live,
        [changes.Change(customer, held, nothing)],
        "forget",
        history=False,
        keep_unchanged=True,
    )
    cur = await conn.execute(
        f"INSERT INTO {db.CONTROL}.erasures (customer, subjects, keys, requested_by, erased_at)"
        " VALUES (%s, %s, %s, %s, coalesce(to_timestamp(%s), now())) RETURNING id",
        (customer, wanted, len(key_ids), requested_by, at),
    )
    erasure = (await cur.fetchone() or (0,))[0]
    await conn.execute(
        f"INSERT INTO {db.CONTROL}.erased_keys (key_id, erasure)"
        " SELECT unnest(%s::text[]), %s ON CONFLICT DO NOTHING",
        (sorted(set(key_ids)), erasure),
    )
    return Erased(customer, tuple(wanted), len(key_ids), rows, len(schemas))


async def hold_folds(conn: AsyncConnection[Any]) -> None:
    """Wait for every fold transaction past its `screen`, and make every later one see this
    transaction's erased keys or retry (see the module doc). Before any other lock but the
    active version's share lock, which the writer takes first too (no lock cycle)."""
    await db.active_schema(conn, lock=True)
    await conn.execute(f"UPDATE {db.CONTROL}.erasure_epoch SET epoch = epoch + 1")


class ErasedKeys:
    """The erased key ids and forgotten subjects (subject -> the latest erasure's time) a
    process has loaded, as of an epoch: `screen` looks nothing up while the epoch is
    unchanged, and then loads only the erasures committed since (their ids grow in commit
    order: erasures serialise on the epoch row and take their id after it). One per writer
    (`ProjectionStore`); a few ids per forgotten customer."""

    def __init__(self) -> None:
        self.epoch = 0
        self.last_erasure = 0
        self.ids: set[str] = set()
        self.subjects: dict[str, float] = {}

    async def at(self, conn: AsyncConnection[Any], epoch: int) -> set[str]:
        if epoch != self.epoch:
            cur = await conn.execute(
                f"SELECT key_id, erasure FROM {db.CONTROL}.erased_keys WHERE erasure > %s",
                (self.last_erasure,),
            )
            ids = await cur.fetchall()
            cur = await conn.execute(
                "SELECT id, subjects, extract(epoch FROM erased_at)::float8"
                f" FROM {db.CONTROL}.erasures WHERE id > %s",
                (self.last_erasure,),
            )
            for erasure, subjects, when in await cur.fetchall():
                for subject in subjects:
                    self.subjects[subject] = max(float(when), self.subjects.get(subject, 0.0))
                self.last_erasure = max(self.last_erasure, int(erasure))
            for key_id, erasure in ids:
                self.ids.add(str(key_id))
                self.last_erasure = max(self.last_erasure, int(erasure))
            self.epoch = epoch
        return self.ids


def epoch_read() -> Read[int]:
    """The erasure epoch, share-locked: the first read of `screen` (see the module doc)."""
    return Read(f"SELECT epoch FROM {db.CONTROL}.erasure_epoch FOR SHARE", None, _epoch)


def _epoch(rows: list[Any]) -> int:
    return int(rows[0][0]) if rows else 0


async def screen(
    conn: AsyncConnection[Any], messages: Sequence[Message], erased: ErasedKeys | None = None
) -> Sequence[Message]:
    """`messages` with every record sealed by an erased data key, or about a forgotten
    subject and created before it was forgotten, made `forgotten`: the first step of every
    transaction that folds records (see the module doc). A batch of forgotten records only
    takes no lock; otherwise one row is share-locked and read (`epoch_read`), and the
    erasures are read only when one committed since `erased` last looked. Only a record
    whose message key is a forgotten subject is parsed (for its `created`)."""
    if all(m.unread for m in messages):
        return messages
    return await screen_at(conn, messages, await epoch_read().run(conn), erased)


async def screen_at(
    conn: AsyncConnection[Any],
    messages: Sequence[Message],
    epoch: int,
    erased: ErasedKeys | None = None,
) -> Sequence[Message]:
    """`screen`, the epoch read already (`epoch_read`, in this transaction, sent with other
    reads: `projections.reads`)."""
    erased = erased or ErasedKeys()
    gone = await erased.at(conn, epoch)
    if not gone and not erased.subjects:
        return messages
    return [
        replace(m, value=b"", forgotten=True, orphan=False)
        if _erased(m, gone, erased.subjects)
        else m
        for m in messages
    ]


def _erased(message: Message, gone: set[str], subjects: dict[str, float]) -> bool:
    if message.forgotten:
        return False
    # An orphan (its key never came) of a forgotten subject is forgotten: a keyring that no
    # longer sees the key's tombstone nor a forget mark (forgets before the marks) cannot
    # tell the two apart; its value is empty (created 0: before any forget).
    if message.key_id is not None and message.key_id in gone:
        return True
    at = subjects.get(message.key) if message.key is not None else None
    return at is not None and _created(message.value) < at


def _created(raw: bytes) -> float:
    """A record's `created` (0 when it has none or is unreadable: older than any forget)."""
    try:
        doc = bodies.loads(raw)
    except bodies.UnreadableBody:
        return 0.0
    return (bodies.epoch_seconds(doc.get("created")) if isinstance(doc, dict) else None) or 0.0


async def _customer_tables(conn: AsyncConnection[Any], schema: str) -> list[str]:
    """The tables of `schema` keyed by customer besides its entitlements: "history" and
    "recompute_queue" (regrouped subscribers still to recompute), those it has (versions
    built before them have none)."""
    found = []
    for table in ("history", "recompute_queue"):
        cur = await conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            found.append(table)
    return found


async def _entitlement(conn: AsyncConnection[Any], schema: str, customer: str) -> Entitlement:
    cur = await conn.execute(
        sql.SQL("SELECT groups, movie_ids FROM {} WHERE customer = %s").format(
            db.qualified(schema, "customer_entitlements")
        ),
        (customer,),
    )
    row = await cur.fetchone()
    if row is None:
        return Entitlement((), ())
    return Entitlement(tuple(sorted(row[0])), tuple(sorted(row[1])))


Connect = Callable[[], Awaitable[AsyncConnection[Any]]]
# the keyring's `forget`: mark the subjects forgotten at a time, delete their data keys
Shred = Callable[[Sequence[str], float], Awaitable[Sequence[str]]]


async def forget(
    connect: Connect,
    customer: str,
    *,
    shred: Shred,
    requested_by: str,
) -> Erased:
    """Forget `customer`: link, delete the data keys (`shred`: the keyring's, which returns
    the ids of the keys it deleted), then, in one transaction, hold the folds
    (`hold_folds`), link again (rows folded meanwhile may name more subjects: their keys go
    too), and erase. From its commit on, no fold transaction applies an event sealed with
    one of those keys, whatever the keyring of its process has read (module doc)."""
    async with await connect() as conn:
        await db.migrate(conn)
        await conn.commit()
        subjects = await linked_subjects(conn, customer)
        await conn.commit()
    # The one time of this forget: the keys topic's marks and the erasure record carry it,
    # and an event about them created before it never folds (module doc).
    at = time.time()
    # Outside the transaction: tombstoning is a Kafka round trip, and folds wait while
    # `hold_folds` holds. Processes that read the tombstones skip the events already.
    key_ids = list(await shred(subjects, at))
    async with await connect() as conn, conn.transaction():
        await hold_folds(conn)
        more = sorted(set(await linked_subjects(conn, customer)) - set(subjects))
        if more:
            key_ids += await shred(more, at)
        return await erase(
            conn,
            customer,
            [*subjects, *more],
            key_ids=key_ids,
            requested_by=requested_by,
            at=at,
        )


async def erasures(conn: AsyncConnection[Any], customer: str) -> list[dict[str, Any]]:
    """The erasure records of `customer` (newest last)."""
    cur = await conn.execute(
        f"SELECT customer, subjects, keys, requested_by, erased_at FROM {db.CONTROL}.erasures"
        " WHERE customer = %s ORDER BY id",
        (customer,),
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def leftovers(
    conn: AsyncConnection[Any], customer: str, subjects: Sequence[str]
) -> list[str]:
    """What any version still holds of `customer` or `subjects`: one line per place. The
    `forget` change and the erasure record are expected and not listed."""
    wanted = sorted({customer, *subjects})
    found: list[str] = []
    like = f"%{customer}%"
    for schema in await _schemas(conn):
        history = await _customer_tables(conn, schema)
        for table in (*db.MIRROR_TABLES, "customer_entitlements", *history):
            plain = table in ("customer_entitlements", "history", "recompute_queue")
            key = "customer" if plain else "id"
            text = "customer" if plain else "record::text"
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {} WHERE customer = %s OR {} = ANY(%s) OR {} LIKE %s"
                ).format(db.qualified(schema, table), sql.Identifier(key), sql.SQL(text)),
                (customer, wanted, like),
            )
            n = int((await cur.fetchone() or (0,))[0])
            if n:
                found.append(f"{schema}.{table}: {n} row(s)")
        letters = sql.SQL(
            "SELECT count(*) FROM {} WHERE key = ANY(%s) OR position(%s IN raw) > 0"
        ).format(db.qualified(schema, "dead_letters"))
        cur = await conn.execute(letters, (wanted, customer.encode()))
        n = int((await cur.fetchone() or (0,))[0])
        if n:
            found.append(f"{schema}.dead_letters: {n} row(s)")
    cur = await conn.execute(
        f"SELECT count(*) FROM {db.CONTROL}.changes WHERE customer = %s AND cause <> 'forget'",
        (customer,),
    )
    n = int((await cur.fetchone() or (0,))[0])
    if n:
        found.append(f"{db.CONTROL}.changes: {n} row(s)")
    return found
