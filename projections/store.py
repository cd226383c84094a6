"""The projection writer: applies a batch of log records to one projection version.

One call of `ProjectionStore.apply` is one Postgres transaction that holds, together, the
mirrored rows the batch changed, the recomputed entitlements of every customer it touched,
the ids of the events it applied (dedup), its dead letters and the checkpoint of every
partition it consumed. Either all of it commits or none of it does, so a crash anywhere
replays the batch harmlessly: each event takes effect exactly once.

The transaction is SERIALIZABLE: a product's events and its subscribers' events live in
different partitions and may be folded at the same moment by different workers; Postgres
detects the read/write overlap of the two entitlement recomputations and aborts one, which
the caller retries. The result therefore never depends on that timing.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from psycopg import AsyncConnection, IsolationLevel, sql

from . import schema as db
from .entitlements import Entitlement, Policy, derive
from .errors import EventParseError, FoldError
from .events import StripeEvent, parse
from .fold import FoldResult, fold_batch, target
from .rows import (
    ChargeRow,
    ProductRow,
    PurchaseRow,
    RefundRow,
    Row,
    Stamp,
    SubscriptionRow,
    customer_of,
    from_record,
    refs_of,
)

log = logging.getLogger(__name__)

R = TypeVar("R", SubscriptionRow, PurchaseRow, ChargeRow, RefundRow, ProductRow)


@dataclass(frozen=True, slots=True)
class Message:
    """One record read from the topic: all the writer needs of it."""

    partition: int
    offset: int
    key: str | None
    value: bytes


@dataclass
class ApplyResult:
    applied: int = 0
    duplicates: int = 0
    below_checkpoint: int = 0
    parked: int = 0
    poison: int = 0
    unknown: int = 0
    customers: int = 0
    gaps: dict[int, int] = field(default_factory=dict)  # partition -> offset to seek back to
    next_offsets: dict[int, int] = field(default_factory=dict)


class ProjectionStore:
    """Writes folded batches into one projection version.

    `schema=None` follows the active version (looked up, share-locked, in every transaction,
    so that a replay's swap and a batch never interleave); replay passes its new schema.
    """

    def __init__(self, topic: str, policy: Policy, *, schema: str | None = None) -> None:
        self.topic = topic
        self.policy = policy
        self.schema = schema

    # -- the batch transaction ---------------------------------------------------------

    async def apply(
        self, conn: AsyncConnection[Any], messages: Sequence[Message], *, recompute: bool = True
    ) -> ApplyResult:
        """Apply `messages` (in log order per partition) in one serializable transaction.

        Raises psycopg errors unchanged: the caller retries transient ones with backoff.

        Without `recompute` (replay's bulk pass) a batch reads and writes only rows of
        objects whose events live in its own partitions, so READ COMMITTED is enough, and
        parallel replay jobs do not abort each other on index-page predicate locks.
        """
        await conn.set_isolation_level(
            IsolationLevel.SERIALIZABLE if recompute else IsolationLevel.READ_COMMITTED
        )
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            return await self._apply(conn, schema, messages, recompute)

    async def _apply(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        messages: Sequence[Message],
        recompute: bool = True,
    ) -> ApplyResult:
        result = ApplyResult()
        fresh = await self._continuous(conn, schema, messages, result)
        if not fresh:
            await self._save_checkpoints(conn, schema, result.next_offsets)
            return result

        parked = await self._parked_keys(conn, schema, {m.key or "" for m in fresh})
        await self._fold_and_write(
            conn, schema, fresh, dict.fromkeys(parked, -1), result, recompute=recompute
        )
        await self._save_checkpoints(conn, schema, result.next_offsets)
        return result

    async def _fold_and_write(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        fresh: Sequence[Message],
        parked_from: dict[str, int],
        result: ApplyResult,
        *,
        recompute: bool = True,
    ) -> None:
        """Fold and write `fresh`; `parked_from` maps a key (customer) to the offset from
        which its events are parked (-1: all of them, the key already has a poison event)."""
        events: list[StripeEvent] = []
        poison: list[tuple[Message, str | None, str | None, BaseException]] = []
        for m in fresh:
            try:
                events.append(parse(m.value, partition=m.partition, offset=m.offset, key=m.key))
            except EventParseError as exc:
                poison.append((m, *_id_and_type(m.value), exc))
                _park(parked_from, m.key, m.offset)
        seen = await self._seen(conn, schema, [e.id for e in events])
        current = await self._load_targets(conn, schema, events)

        def is_parked(e: StripeEvent) -> bool:
            start = parked_from.get(e.key or "")
            return start is not None and e.offset >= start

        # Fold; a rule that raises poisons its event and parks the rest of that customer's
        # events. Folding is pure and cheap, so simply fold the batch again without them.
        while True:
            live = [e for e in events if not is_parked(e)]
            try:
                folded = fold_batch(live, current, seen)
                break
            except FoldError as exc:
                bad = exc.event
                poison.append((_message_of(bad, fresh), bad.id, bad.type, exc.__cause__ or exc))
                _park(parked_from, bad.key, bad.offset)

        poisoned = {(m.partition, m.offset) for m, *_ in poison}
        by_offset = {(m.partition, m.offset): m for m in fresh}
        await self._dead_letter(conn, schema, poison, "poison")
        parked = [
            (by_offset[(e.partition, e.offset)], e.id, e.type, None)
            for e in events
            if is_parked(e) and (e.partition, e.offset) not in poisoned
        ]
        await self._dead_letter(conn, schema, parked, "parked")

        await self._write_rows(conn, schema, folded.changed)
        applied = [e for e in live if e.id not in seen]
        await self._mark_processed(conn, schema, folded, applied)
        if recompute:
            result.customers = await self._recompute(conn, schema, folded, current)
        result.applied = len(applied) - folded.skipped_duplicates
        result.duplicates = folded.skipped_duplicates + sum(1 for e in live if e.id in seen)
        result.parked = len(parked)
        result.poison = len(poison)
        result.unknown = folded.unknown

    async def rebuild(
        self, conn: AsyncConnection[Any], schema: str, messages: Sequence[Message]
    ) -> ApplyResult:
        """Fold `messages` into `schema` inside the caller's transaction, without touching
        checkpoints (for a per-customer rebuild of events the checkpoint already covers)."""
        result = ApplyResult()
        await self._fold_and_write(conn, schema, messages, {}, result)
        return result

    # -- dead letters --------------------------------------------------------------------

    async def release(
        self, conn: AsyncConnection[Any], key: str, *, skip_poison: bool = False
    ) -> ApplyResult:
        """Fold a parked customer's dead letters again, in log order, with today's rules.

        `skip_poison=True` gives up on the poison event(s) (state `skipped`) and folds the
        events parked behind them. Events that fold now are marked `applied`; if a rule still
        raises, the customer stays parked.
        """
        await conn.set_isolation_level(IsolationLevel.SERIALIZABLE)
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            table = db.qualified(schema, "dead_letters")
            if skip_poison:
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET state = 'skipped', resolved_at = now()"
                        " WHERE key = %s AND state = 'poison'"
                    ).format(table),
                    (key,),
                )
            cur = await conn.execute(
                sql.SQL(
                    'SELECT partition, "offset", key, raw FROM {}'
                    " WHERE key = %s AND state IN ('poison', 'parked')"
                    ' ORDER BY partition, "offset" FOR UPDATE'
                ).format(table),
                (key,),
            )
            messages = [Message(p, o, k, bytes(raw)) for p, o, k, raw in await cur.fetchall()]
            # Take them out of the dead-letter set first, so that the fold does not park
            # them behind themselves; whatever fails again is re-inserted as poison/parked.
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE key = %s AND state IN ('poison', 'parked')").format(
                    table
                ),
                (key,),
            )
            result = ApplyResult()
            await self._fold_and_write(conn, schema, messages, {}, result)
            if result.poison == 0:
                # Keep an audit trail of what was released.
                await self._dead_letter(
                    conn, schema, [(m, None, None, None) for m in messages], "applied"
                )
            return result

    async def dead_letters(
        self, conn: AsyncConnection[Any], *, include_resolved: bool = False
    ) -> list[dict[str, Any]]:
        schema = self.schema or await db.active_schema(conn)
        cur = await conn.execute(
            sql.SQL(
                'SELECT id, key, partition, "offset", event_id, event_type, state, error,'
                " created_at FROM {} WHERE %s OR state IN ('poison', 'parked')"
                ' ORDER BY key, partition, "offset"'
            ).format(db.qualified(schema, "dead_letters")),
            (include_resolved,),
        )
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]

    # -- offsets -----------------------------------------------------------------------

    async def _continuous(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        messages: Sequence[Message],
        result: ApplyResult,
    ) -> list[Message]:
        """Drop what the checkpoint already covers; stop each partition at its first gap.

        The checkpoint rows are locked: two workers briefly owning one partition during a
        rebalance are serialised here, and the second one sees the first one's offsets.
        """
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in messages:
            by_partition[m.partition].append(m)
        cur = await conn.execute(
            sql.SQL(
                "SELECT partition, next_offset FROM {} WHERE topic = %s AND partition = ANY(%s)"
                " ORDER BY partition FOR UPDATE"
            ).format(db.qualified(schema, "checkpoints")),
            (self.topic, sorted(by_partition)),
        )
        checkpoint = {p: o for p, o in await cur.fetchall()}
        fresh: list[Message] = []
        for partition, batch in by_partition.items():
            expected = checkpoint.get(partition, 0)
            for m in sorted(batch, key=lambda m: m.offset):
                if m.offset < expected:
                    result.below_checkpoint += 1
                    continue
                if m.offset > expected:
                    # A gap (faust-streaming/faust#216, or a swap to a version that is
                    # behind): apply nothing past it; the consumer seeks back.
                    result.gaps[partition] = expected
                    break
                fresh.append(m)
                expected += 1
            if expected != checkpoint.get(partition, 0):
                result.next_offsets[partition] = expected
        return fresh

    async def _save_checkpoints(
        self, conn: AsyncConnection[Any], schema: str, next_offsets: Mapping[int, int]
    ) -> None:
        if not next_offsets:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (topic, partition, next_offset) VALUES (%s, %s, %s)"
                    " ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = excluded.next_offset, updated_at = now()"
                ).format(db.qualified(schema, "checkpoints")),
                [(self.topic, p, o) for p, o in sorted(next_offsets.items())],
            )

    async def checkpoints(self, conn: AsyncConnection[Any]) -> tuple[str, dict[int, int]]:
        """The target version's schema and its next offset to read per partition."""
        async with conn.transaction():  # one snapshot for both reads
            schema = self.schema or await db.active_schema(conn)
            cur = await conn.execute(
                sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
                    db.qualified(schema, "checkpoints")
                ),
                (self.topic,),
            )
            return schema, {p: o for p, o in await cur.fetchall()}

    # -- reads -------------------------------------------------------------------------

    async def _seen(self, conn: AsyncConnection[Any], schema: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        cur = await conn.execute(
            sql.SQL("SELECT event_id FROM {} WHERE event_id = ANY(%s)").format(
                db.qualified(schema, "processed_events")
            ),
            (ids,),
        )
        return {r[0] for r in await cur.fetchall()}

    async def _parked_keys(
        self, conn: AsyncConnection[Any], schema: str, keys: set[str]
    ) -> set[str]:
        cur = await conn.execute(
            sql.SQL(
                "SELECT DISTINCT key FROM {} WHERE key = ANY(%s) AND state IN ('poison', 'parked')"
            ).format(db.qualified(schema, "dead_letters")),
            (sorted(keys),),
        )
        return {r[0] for r in await cur.fetchall()}

    async def _load_targets(
        self, conn: AsyncConnection[Any], schema: str, events: Iterable[StripeEvent]
    ) -> dict[tuple[str, str], Row]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for e in events:
            t = target(e)
            if t is not None:
                wanted[t[0]].add(t[1])
        rows: dict[tuple[str, str], Row] = {}
        for table, ids in wanted.items():
            for row in await self._rows(conn, schema, table, "id = ANY(%s)", sorted(ids)):
                rows[(table, row.id)] = row
        return rows

    async def _rows(
        self, conn: AsyncConnection[Any], schema: str, table: str, where: str, arg: object
    ) -> list[Row]:
        cur = await conn.execute(
            sql.SQL("SELECT record FROM {} WHERE " + where).format(db.qualified(schema, table)),
            (arg,),
        )
        return [from_record(table, r[0]) for r in await cur.fetchall()]

    # -- writes ------------------------------------------------------------------------

    async def _write_rows(
        self, conn: AsyncConnection[Any], schema: str, changed: Mapping[tuple[str, str], Row]
    ) -> None:
        by_table: dict[str, list[Row]] = defaultdict(list)
        for (table, _id), row in changed.items():
            by_table[table].append(row)
        for table, rows in by_table.items():
            await self._upsert(conn, schema, table, rows)

    async def _upsert(
        self, conn: AsyncConnection[Any], schema: str, table: str, rows: list[Row]
    ) -> None:
        """Upsert rows through COPY into a temporary table: one round trip per table,
        whatever the batch size."""
        tmp = await _staging(conn, schema, table)
        cols = (
            "id, customer, refs, record, v_created, v_rank, v_stage, v_partition, v_offset,"
            " event_id"
        )
        async with conn.cursor() as cur:
            async with cur.copy(sql.SQL("COPY {} (" + cols + ") FROM STDIN").format(tmp)) as cp:
                for row in rows:
                    v: Stamp = row.stamp
                    await cp.write_row(
                        (
                            row.id,
                            customer_of(row),
                            list(refs_of(row)),
                            _jsonb(row.to_record()),
                            v.created,
                            v.rank,
                            v.stage,
                            v.partition,
                            v.offset,
                            row.event_id,
                        )
                    )
            updates = ", ".join(f"{c} = excluded.{c}" for c in cols.split(", ")[1:])
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} (" + cols + ") SELECT " + cols + " FROM {}"
                    " ON CONFLICT (id) DO UPDATE SET " + updates
                ).format(db.qualified(schema, table), tmp)
            )

    async def _mark_processed(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        folded: FoldResult,
        applied: Sequence[StripeEvent],
    ) -> None:
        if not applied:
            return
        seen_here: set[str] = set()
        async with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL('COPY {} (event_id, partition, "offset") FROM STDIN').format(
                    db.qualified(schema, "processed_events")
                )
            ) as cp,
        ):
            for e in applied:
                if e.id in seen_here:
                    continue  # a duplicate within the batch
                seen_here.add(e.id)
                await cp.write_row((e.id, e.partition, e.offset))

    async def _dead_letter(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        entries: Sequence[tuple[Message, str | None, str | None, BaseException | None]],
        state: str,
    ) -> None:
        if not entries:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    'INSERT INTO {} (key, topic, partition, "offset", event_id, event_type,'
                    " state, error, traceback, raw) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    ' ON CONFLICT (topic, partition, "offset") DO NOTHING'
                ).format(db.qualified(schema, "dead_letters")),
                [
                    (
                        m.key or "",
                        self.topic,
                        m.partition,
                        m.offset,
                        event_id,
                        event_type,
                        state,
                        None if exc is None else f"{type(exc).__name__}: {exc}",
                        None if exc is None else "".join(traceback.format_exception(exc)),
                        m.value,
                    )
                    for m, event_id, event_type, exc in entries
                ],
            )
        if state == "poison":
            for m, event_id, _t, exc in entries:
                log.error(
                    "poison event %s at %s/%s (key %s) parked: %s",
                    event_id,
                    m.partition,
                    m.offset,
                    m.key,
                    exc,
                )

    # -- entitlements ------------------------------------------------------------------

    async def _recompute(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        folded: FoldResult,
        before: Mapping[tuple[str, str], Row],
    ) -> int:
        """Recompute `customer_entitlements` of every customer the batch may have changed,
        from the mirrored rows (never patched by increments)."""
        customers = {c for c in folded.customers if c}
        # Customers reached through a changed product (its subscribers and buyers) or a
        # changed refund (which names a payment intent, rarely a customer).
        # A product reaches its subscribers only when what it grants changed: a price or
        # description edit must not recompute thousands of customers.
        products = {
            p
            for p in folded.products
            if self._grants(before.get(("products", p)))
            != self._grants(folded.changed.get(("products", p)))
        }
        links = products | set(folded.payment_intents)
        if links:
            q = sql.SQL(" UNION ").join(
                sql.SQL("SELECT customer FROM {} WHERE refs && %(links)s").format(
                    db.qualified(schema, t)
                )
                for t in ("subscriptions", "purchases", "charges")
            )
            cur = await conn.execute(q, {"links": sorted(links)})
            customers.update(r[0] for r in await cur.fetchall() if r[0])
        if customers:
            await self._write_entitlements(
                conn, schema, await self.derive_many(conn, schema, sorted(customers))
            )
        return len(customers)

    def _grants(self, row: Row | None) -> tuple[object, ...] | None:
        """What a product row contributes to entitlements (None: no such product)."""
        if not isinstance(row, ProductRow):
            return None
        meta = dict(row.metadata)
        key = (self.policy.group_key, self.policy.movie_key)
        return (row.deleted, *(meta.get(k) for k in key))

    async def recompute_all(
        self, conn: AsyncConnection[Any], schema: str, *, chunk: int = 5000
    ) -> int:
        """Recompute every customer's entitlements in `schema` (replay defers the per-batch
        recomputation and does it once, here, after the bulk load)."""
        cur = await conn.execute(
            sql.SQL(" UNION ").join(
                sql.SQL("SELECT customer FROM {} WHERE customer IS NOT NULL").format(
                    db.qualified(schema, t)
                )
                for t in ("customers", "subscriptions", "purchases", "charges")
            )
        )
        customers = sorted(r[0] for r in await cur.fetchall())
        for i in range(0, len(customers), chunk):
            part = customers[i : i + chunk]
            async with conn.transaction():  # the temporary table lives for a transaction
                derived = await self.derive_many(conn, schema, part)
                await self._write_entitlements(conn, schema, derived)
        return len(customers)

    async def _write_entitlements(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        derived: Mapping[str, tuple[Entitlement, Row | None]],
    ) -> None:
        """Upsert through COPY into a temporary table: one round trip whatever the count."""
        tmp = await _staging(conn, schema, "customer_entitlements")
        cols = "customer, groups, movie_ids, as_of_event, as_of_created"
        async with conn.cursor() as cur:
            async with cur.copy(sql.SQL("COPY {} (" + cols + ") FROM STDIN").format(tmp)) as cp:
                for customer, (ent, newest) in derived.items():
                    await cp.write_row(
                        (
                            customer,
                            list(ent.groups),
                            list(ent.movie_ids),
                            None if newest is None else newest.event_id,
                            None if newest is None else newest.stamp.created,
                        )
                    )
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} (" + cols + ") SELECT " + cols + " FROM {}"
                    " ON CONFLICT (customer) DO UPDATE SET groups = excluded.groups,"
                    " movie_ids = excluded.movie_ids, as_of_event = excluded.as_of_event,"
                    " as_of_created = excluded.as_of_created, updated_at = now()"
                ).format(db.qualified(schema, "customer_entitlements"), tmp)
            )
            await cur.execute(sql.SQL("TRUNCATE {}").format(tmp))

    async def _typed(
        self, conn: AsyncConnection[Any], schema: str, cls: type[R], where: str, arg: object
    ) -> list[R]:
        rows = await self._rows(conn, schema, cls.table, where, arg)
        return [r for r in rows if isinstance(r, cls)]

    async def derive_many(
        self, conn: AsyncConnection[Any], schema: str, customers: list[str]
    ) -> dict[str, tuple[Entitlement, Row | None]]:
        """Entitlements of `customers` from the mirrored rows of `schema`, each with the
        newest row they were derived from (the event the projection is current as of)."""
        by_customer = "customer = ANY(%s)"
        subs = await self._typed(conn, schema, SubscriptionRow, by_customer, customers)
        purchases = await self._typed(conn, schema, PurchaseRow, by_customer, customers)
        charges = await self._typed(conn, schema, ChargeRow, by_customer, customers)
        intents = sorted(
            {i for p in purchases for i in _intents(p)}
            | {c.payment_intent for c in charges if c.payment_intent}
        )
        refunds = await self._typed(conn, schema, RefundRow, "refs && %s", intents)
        product_ids = sorted(
            {i.product for s in subs for i in s.items if i.product}
            | {p for pu in purchases for p in pu.product_ids}
        )
        products = {
            p.id: p
            for p in await self._typed(conn, schema, ProductRow, "id = ANY(%s)", product_ids)
        }
        subs_of: dict[str, list[SubscriptionRow]] = defaultdict(list)
        purchases_of: dict[str, list[PurchaseRow]] = defaultdict(list)
        charges_of: dict[str, list[ChargeRow]] = defaultdict(list)
        refunds_of: dict[str, list[RefundRow]] = defaultdict(list)
        for s in subs:
            subs_of[s.customer or ""].append(s)
        for p in purchases:
            purchases_of[p.customer or ""].append(p)
        for ch in charges:
            charges_of[ch.customer or ""].append(ch)
        for r in refunds:
            if r.payment_intent:
                refunds_of[r.payment_intent].append(r)
        out: dict[str, tuple[Entitlement, Row | None]] = {}
        for c in customers:
            mine = {i for p in purchases_of[c] for i in _intents(p)}
            refunds_c = [r for pi in sorted(mine) for r in refunds_of[pi]]
            ent = derive(
                subs_of[c], purchases_of[c], charges_of[c], refunds_c, products, self.policy
            )
            used: list[Row] = [*subs_of[c], *purchases_of[c], *charges_of[c], *refunds_c]
            used += [
                products[i.product] for s in subs_of[c] for i in s.items if i.product in products
            ]
            used += [products[p] for pu in purchases_of[c] for p in pu.product_ids if p in products]
            out[c] = (ent, max(used, key=lambda r: r.stamp, default=None))
        return out


def _intents(p: PurchaseRow) -> set[str]:
    """The payment intents that paid for a purchase (a payment intent pays for itself)."""
    out = {p.payment_intent} if p.payment_intent else set()
    if p.kind == "payment_intent":
        out.add(p.id)
    return out


def _message_of(event: StripeEvent, messages: Iterable[Message]) -> Message:
    for m in messages:
        if m.partition == event.partition and m.offset == event.offset:
            return m
    raise LookupError(f"event {event.id} is not in the batch")  # a bug, not bad input


def _jsonb(record: dict[str, Any]) -> str:
    """The record as jsonb text. Postgres cannot store U+0000 in jsonb; Stripe text could carry
    one (metadata is free text), and a batch that can never commit would stall its partition
    for ever, so the character is dropped."""
    return orjson.dumps(record).decode().replace("\\u0000", "")


async def _staging(conn: AsyncConnection[Any], schema: str, table: str) -> sql.Identifier:
    """A temporary table shaped like `schema.table`, emptied at commit: rows are COPYed into
    it, then merged into the real table with one INSERT ... ON CONFLICT."""
    tmp = sql.Identifier(f"_in_{table}")
    await conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(tmp, db.qualified(schema, table))
    )
    return tmp


def _park(parked_from: dict[str, int], key: str | None, offset: int) -> None:
    k = key or ""
    parked_from[k] = min(parked_from.get(k, offset), offset)


def _id_and_type(raw: bytes) -> tuple[str | None, str | None]:
    """Best effort: the id and type of a record that is not a valid Stripe event."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, kind = doc.get("id"), doc.get("type")
    return (ident if isinstance(ident, str) else None, kind if isinstance(kind, str) else None)
