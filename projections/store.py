"""The projection writer: applies a batch of log records to one projection version.

One call of `ProjectionStore.apply` is one Postgres transaction that holds, together, the
mirrored rows the batch changed, the recomputed entitlements of every customer it touched,
the ids of the events it applied (dedup), its dead letters and the checkpoint of every
partition it consumed. Either all of it commits or none of it does, so a crash anywhere
replays the batch harmlessly: each event takes effect exactly once.

The steps, each in a module of its own: lock the checkpoints and keep what continues from
them (`offsets`); hold back what the dead letters park or skip (`deadletters`); parse, drop
duplicates and fold (`events`, `fold`); upsert the changed rows and the dedup records
(`upserts`); recompute the entitlements of the customers reached (`recompute`); save the
checkpoints.

The transaction is SERIALIZABLE: a product's events and its subscribers' events live in
different partitions and may be folded at the same moment by different workers; Postgres
detects the read/write overlap of the two entitlement recomputations and aborts one, which
the caller retries. The result therefore never depends on that timing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, IsolationLevel

from projections import changes, deadletters, offsets, recompute, upserts
from projections import schema as db
from projections.deadletters import Held, Letter
from projections.errors import EventParseError, FoldError
from projections.model.entitlements import Policy
from projections.model.events import StripeEvent, parse
from projections.model.fold import FoldResult, fold_batch, target
from projections.model.rows import Row
from projections.types import Message

__all__ = ["ApplyResult", "ProjectionStore"]


@dataclass
class ApplyResult:
    applied: int = 0  # events newly applied (their ids recorded)
    duplicates: int = 0  # events whose id was applied before (or twice in the batch)
    below_checkpoint: int = 0  # records the checkpoint already covered (redelivered)
    parked: int = 0
    poison: int = 0
    skipped: int = 0  # events an operator skipped (`deadletters skip`)
    unknown: int = 0  # event types no rule reads
    ignored: Counter[str] = field(default_factory=Counter)  # previews, objects without id
    ties: int = 0  # same-second snapshots only log order could order
    customers: int = 0
    gaps: dict[int, int] = field(default_factory=dict)  # partition -> offset to seek back to
    next_offsets: dict[int, int] = field(default_factory=dict)

    def add(self, other: ApplyResult) -> None:
        """Add `other`'s counts (a batch applied in parts)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ignored.update(other.ignored)
        self.gaps.update(other.gaps)
        self.next_offsets.update(other.next_offsets)


_COUNTS = (
    "applied",
    "duplicates",
    "below_checkpoint",
    "parked",
    "poison",
    "skipped",
    "unknown",
    "ties",
    "customers",
)


class ProjectionStore:
    """Writes folded batches into one projection version.

    `schema=None` follows the active version (looked up, share-locked, in every transaction,
    so that a replay's swap and a batch never interleave); replay passes its new schema.
    """

    def __init__(
        self, topic: str, policy: Policy, *, schema: str | None = None, feed: bool | None = None
    ) -> None:
        self.topic = topic
        self.policy = policy
        self.schema = schema
        # The change feed follows the active version; a replay's build emits nothing.
        self.feed = schema is None if feed is None else feed

    async def _begin(self, conn: AsyncConnection[Any], isolation: IsolationLevel) -> None:
        await conn.set_isolation_level(isolation)

    async def apply(
        self, conn: AsyncConnection[Any], messages: Sequence[Message], *, recompute: bool = True
    ) -> ApplyResult:
        """Apply `messages` (in log order per partition) in one transaction.

        Raises psycopg errors unchanged: the caller retries transient ones with backoff and
        isolates deterministic ones (`quarantine`).

        Without `recompute` (replay's bulk pass) a batch does not recompute entitlements, so
        READ COMMITTED is enough, and parallel replay jobs do not abort each other on
        index-page predicate locks; the stamp guard of the upserts keeps their rows right.
        """
        level = IsolationLevel.SERIALIZABLE if recompute else IsolationLevel.READ_COMMITTED
        await self._begin(conn, level)
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            cont = offsets.continuity(
                messages,
                await offsets.lock(conn, schema, self.topic, (m.partition for m in messages)),
            )
            result = ApplyResult(below_checkpoint=cont.below_checkpoint, gaps=cont.gaps)
            result.next_offsets = cont.next_offsets
            if cont.fresh:
                held = await deadletters.held(conn, schema, self.topic, cont.fresh)
                await self._fold_and_write(conn, schema, cont.fresh, held, result, recompute)
            await offsets.save(conn, schema, self.topic, cont.next_offsets)
            return result

    async def quarantine(
        self, conn: AsyncConnection[Any], message: Message, error: BaseException
    ) -> ApplyResult:
        """Dead-letter `message` as poison (its own transaction) and move its checkpoint past
        it: for an event that fails the whole transaction deterministically (Postgres refuses
        what it becomes, or the writer raises on it). Later events of its key are parked."""
        await self._begin(conn, IsolationLevel.SERIALIZABLE)
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            checkpoint = await offsets.lock(conn, schema, self.topic, [message.partition])
            cont = offsets.continuity([message], checkpoint)
            result = ApplyResult(below_checkpoint=cont.below_checkpoint, gaps=cont.gaps)
            if cont.fresh:
                letter: Letter = (message, *deadletters.id_and_type(message.value), error)
                await deadletters.record(conn, schema, self.topic, [letter], "poison")
                result.poison = 1
                result.next_offsets = cont.next_offsets
                await offsets.save(conn, schema, self.topic, cont.next_offsets)
            return result

    async def _fold_and_write(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        fresh: Sequence[Message],
        held: Held,
        result: ApplyResult,
        recompute_entitlements: bool = True,
        cause: str = "event",
        also: str | None = None,
    ) -> None:
        poison: list[Letter] = []
        events: list[StripeEvent] = []
        for m in fresh:
            if m.position in held.skipped:
                result.skipped += 1
                continue
            try:
                events.append(parse(m.value, partition=m.partition, offset=m.offset, key=m.key))
            except EventParseError as exc:
                poison.append((m, *deadletters.id_and_type(m.value), exc))
                held.park(m.key, m.offset)
        seen = await upserts.seen(conn, schema, [e.id for e in events])
        current = await self._load_targets(conn, schema, events)
        # A rule that raises poisons its event and parks the rest of that customer's events.
        # Folding is pure and cheap, so simply fold the batch again without them.
        while True:
            live = [e for e in events if not held.is_parked(e.key, e.offset)]
            try:
                folded = fold_batch(live, current, seen)
                break
            except FoldError as exc:
                bad = exc.event
                message = next(m for m in fresh if m.position == (bad.partition, bad.offset))
                poison.append((message, bad.id, bad.type, exc.__cause__ or exc))
                held.park(bad.key, bad.offset)

        poisoned = {m.position for m, *_ in poison}
        by_position = {m.position: m for m in fresh}
        parked: list[Letter] = [
            (by_position[(e.partition, e.offset)], e.id, e.type, None)
            for e in events
            if held.is_parked(e.key, e.offset) and (e.partition, e.offset) not in poisoned
        ]
        await deadletters.record(conn, schema, self.topic, poison, "poison")
        await deadletters.record(conn, schema, self.topic, parked, "parked")
        await upserts.write_rows(conn, schema, folded.changed)
        applied = set(folded.applied)
        first: dict[str, StripeEvent] = {}  # an id twice in the batch is applied once
        for e in live:
            if e.id in applied:
                first.setdefault(e.id, e)
        await upserts.mark_processed(
            conn, schema, ((e.id, e.partition, e.offset) for e in first.values())
        )
        if also:
            folded.customers.add(also)
        if recompute_entitlements:
            result.customers = await recompute.recompute(
                conn, schema, self.policy, folded, current, cause=cause if self.feed else None
            )
        _count(result, folded, live, poison, parked)
        if self.feed and result.applied:  # read-your-writes waiters look again
            await conn.execute("SELECT pg_notify(%s, '')", (changes.FOLDED_CHANNEL,))

    async def _load_targets(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[StripeEvent]
    ) -> dict[tuple[str, str], Row]:
        """The current row of every object the events write."""
        wanted: dict[str, set[str]] = {}
        for e in events:
            t = target(e)
            if t is not None:
                wanted.setdefault(t[0], set()).add(t[1])
        rows: dict[tuple[str, str], Row] = {}
        for table, ids in wanted.items():
            for row in await upserts.load_rows(conn, schema, table, "id = ANY(%s)", sorted(ids)):
                rows[(table, row.id)] = row
        return rows

    async def rebuild(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        messages: Sequence[Message],
        *,
        customer: str | None = None,
    ) -> ApplyResult:
        """Fold a key's whole history `messages` into `schema` inside the caller's transaction,
        without touching checkpoints (a one-customer rebuild of events the checkpoint already
        covers); `customer`'s entitlements are recomputed even if no event applies. Dead-letter
        decisions stand: skipped events stay skipped, and a parked key stays parked from its
        first dead letter on."""
        result = ApplyResult()
        held = await deadletters.held(conn, schema, self.topic, messages, from_first_letter=True)
        await self._fold_and_write(
            conn, schema, messages, held, result, cause="rebuild", also=customer
        )
        return result

    async def release(
        self, conn: AsyncConnection[Any], key: str, *, skip_poison: bool = False
    ) -> ApplyResult:
        """Fold a parked customer's dead letters again, in log order, with today's rules.

        `skip_poison=True` gives up on the poison event(s) (state `skipped`) and folds the
        events parked behind them. Events that fold now are marked `applied`; if a rule still
        raises, the customer stays parked.
        """
        await self._begin(conn, IsolationLevel.SERIALIZABLE)
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            messages = await deadletters.take_for_release(
                conn, schema, key, skip_poison=skip_poison
            )
            result = ApplyResult()
            await self._fold_and_write(conn, schema, messages, Held(), result)
            if result.poison == 0:  # keep an audit trail of what was released
                released: list[Letter] = [(m, None, None, None) for m in messages]
                await deadletters.record(conn, schema, self.topic, released, "applied")
            return result

    async def dead_letters(
        self, conn: AsyncConnection[Any], *, include_resolved: bool = False
    ) -> list[dict[str, Any]]:
        schema = self.schema or await db.active_schema(conn)
        return await deadletters.rows(conn, schema, include_resolved=include_resolved)

    async def checkpoints(self, conn: AsyncConnection[Any]) -> tuple[str, dict[int, int]]:
        """The target version's schema and its next offset to read per partition."""
        async with conn.transaction():  # one snapshot for both reads
            schema = self.schema or await db.active_schema(conn)
            return schema, await offsets.read(conn, schema, self.topic)

    async def recompute_all(self, conn: AsyncConnection[Any], schema: str) -> int:
        """Recompute every customer's entitlements in `schema` (after replay's bulk pass)."""
        return await recompute.recompute_all(conn, schema, self.policy)


def _count(
    result: ApplyResult,
    folded: FoldResult,
    live: Sequence[StripeEvent],
    poison: Sequence[Letter],
    parked: Sequence[Letter],
) -> None:
    result.applied = len(folded.applied)
    result.duplicates = len(live) - len(folded.applied)
    result.parked = len(parked)
    result.poison = len(poison)
    result.unknown = folded.unknown
    result.ignored.update(folded.ignored)
    result.ties = folded.ties
