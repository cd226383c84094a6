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
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, IsolationLevel, errors

from projections import changes, deadletters, erasure, offsets, reads, recompute, upserts, versions
from projections import schema as db
from projections.model.entitlements import Policy
from projections.model.fold import Key
from projections.model.plan import Batch, Held, Letter, Plan, id_and_type, letters
from projections.model.rows import Row
from projections.types import Message

__all__ = ["PIPELINED_RECORDS", "ApplyResult", "ProjectionStore"]


@dataclass
class ApplyResult:
    applied: int = 0  # events newly applied (their ids recorded)
    duplicates: int = 0  # events whose id was applied before (or twice in the batch)
    below_checkpoint: int = 0  # records the checkpoint already covered (redelivered)
    parked: int = 0
    poison: int = 0
    skipped: int = 0  # events an operator skipped (`deadletters skip`)
    unknown: int = 0  # event types no rule reads
    forgotten: int = 0  # events whose data key was deleted (erasure): unreadable, passed
    orphans: int = 0  # events whose data key never reached the keys topic: passed
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
    "forgotten",
    "orphans",
    "ties",
    "customers",
)


# Up to this many records a batch's transaction runs in pipeline mode (`_apply_once`): every
# live batch (ENTITLED_BATCH_SIZE is 500), not replay's bulk batches of 5,000, whose upserts
# keep COPY (one statement per table for thousands of rows costs more than its round trips).
PIPELINED_RECORDS = 1000


@dataclass
class _Start:
    """What a batch's transaction reads first, in one round trip (`ProjectionStore._start`)."""

    schema: str
    cont: offsets.Continuity
    held: Held
    # The ids applied before and the stored rows of what the batch's events write, read with
    # the rest for the batch as parsed before the checkpoints were known (a superset).
    loaded: tuple[Batch, set[str], dict[Key, Row]] | None = None


class _VersionGone(Exception):
    """The version the last transaction wrote was dropped since (its statements failed)."""


class ProjectionStore:
    """Writes folded batches into one projection version.

    `schema=None` follows the active version (looked up, share-locked, in every transaction,
    so that a replay's swap and a batch never interleave); replay passes its new schema.
    """

    def __init__(
        self,
        topic: str,
        policy: Policy,
        *,
        schema: str | None = None,
        feed: bool | None = None,
        regroup_chunk: int | None = None,
    ) -> None:
        self.topic = topic
        self.policy = policy
        self.schema = schema
        # At most this many subscribers of a regrouped product are recomputed per
        # transaction; more are queued for `settle` (issue 19, point 5). None: all in the
        # batch's transaction (a replay's build, whose history records them at the regroup).
        self.regroup_chunk = regroup_chunk or None
        # The change feed follows the active version; a replay's build emits nothing but
        # records its version's history, event by event (`_apply_in_waves`).
        self.feed = schema is None if feed is None else feed
        self.waves = schema is not None and not self.feed
        self.erased = erasure.ErasedKeys()  # what `erasure.screen` has loaded so far
        # The active version's schema as the last transaction read it: the first reads of
        # the next one name it before they read it again (`_start`).
        self._active: str | None = None

    async def _begin(self, conn: AsyncConnection[Any], isolation: IsolationLevel) -> None:
        await conn.set_isolation_level(isolation)

    async def apply(
        self,
        conn: AsyncConnection[Any],
        messages: Sequence[Message],
        *,
        recompute: bool = True,
        alone_with: AsyncConnection[Any] | None = None,
    ) -> ApplyResult:
        """Apply `messages` (in log order per partition) in one transaction.

        Raises psycopg errors unchanged: the caller retries transient ones with backoff and
        isolates deterministic ones (`quarantine`).

        `alone_with` (another connection; the live version only): that connection holds the
        active row FOR UPDATE while `messages` apply, as a swap does, so no other batch,
        regroup drain or erasure of any worker runs meanwhile: they wait on their share lock
        before reading anything. For an event that loses every serialization conflict to
        other workers' steady commits (a regroup retried for minutes, seen in a chaos run):
        alone, it cannot be the pivot of a dangerous structure. Its own transaction starts
        only once the lock is held, so its snapshot sees everything committed before.

        Without `recompute` (replay's bulk pass) a batch does not recompute entitlements, so
        READ COMMITTED is enough, and parallel replay jobs do not abort each other on
        index-page predicate locks; the stamp guard of the upserts keeps their rows right.
        """
        if alone_with is None:
            return await self._apply(conn, messages, recompute=recompute, row_held=False)
        assert self.schema is None, "only the live version is guarded by the active row"
        async with alone_with.transaction():
            await versions.lock_active(alone_with)
            return await self._apply(conn, messages, recompute=recompute, row_held=True)

    async def _apply(
        self,
        conn: AsyncConnection[Any],
        messages: Sequence[Message],
        *,
        recompute: bool,
        row_held: bool,
    ) -> ApplyResult:
        try:
            return await self._apply_once(conn, messages, recompute=recompute, row_held=row_held)
        except _VersionGone:  # rolled back; the active version is read first this time
            self._active = None
            return await self._apply_once(conn, messages, recompute=recompute, row_held=row_held)

    async def _apply_once(
        self,
        conn: AsyncConnection[Any],
        messages: Sequence[Message],
        *,
        recompute: bool,
        row_held: bool,
    ) -> ApplyResult:
        level = IsolationLevel.SERIALIZABLE if recompute else IsolationLevel.READ_COMMITTED
        # A batch of up to PIPELINED_RECORDS records runs in pipeline mode (no COPY: every
        # write is one statement, `upserts`): a statement whose result is not read yet
        # (BEGIN, the writes, the change rows, the checkpoints, COMMIT) travels with the
        # next one that is read, or with the last ones: 3 round trips for a batch of new
        # subscriptions, not 23 (issue 21).
        transaction: AbstractAsyncContextManager[Any]
        if len(messages) <= PIPELINED_RECORDS:
            transaction = reads.pipelined_transaction(conn, level)
        else:
            await self._begin(conn, level)
            transaction = conn.transaction()
        async with transaction:
            # READ COMMITTED is replay's parallel bulk pass: it locks what it reads first
            # (`_plan`), so its rows are read after the locks, not with the first reads
            start = await self._start(
                conn, messages, row_held=row_held, preload=recompute and not self.waves
            )
            schema, cont = start.schema, start.cont
            result = ApplyResult(below_checkpoint=cont.below_checkpoint, gaps=cont.gaps)
            result.next_offsets = cont.next_offsets
            if cont.fresh:
                lock = not recompute
                if self.waves:
                    await self._apply_in_waves(
                        conn, schema, cont.fresh, start.held, result, lock=lock
                    )
                else:
                    plan = await self._plan(
                        conn, schema, cont.fresh, start.held, lock=lock, loaded=start.loaded
                    )
                    cause = "event" if recompute else None
                    await self._write(conn, schema, plan, result, cause=cause)
            await offsets.save(conn, schema, self.topic, cont.next_offsets)
            return result

    async def _start(
        self,
        conn: AsyncConnection[Any],
        messages: Sequence[Message],
        *,
        row_held: bool,
        preload: bool,
    ) -> _Start:
        """The first reads of a batch's transaction, sent together (`projections.reads`): the
        active version (share-locked, unless `row_held`: our other connection holds the row
        FOR UPDATE, a share lock would wait for it for ever), the erasure epoch
        (`erasure.screen`: records of a customer forgotten meanwhile are forgotten here too),
        the checkpoints (locked), the dead letters of the batch's keys and, with `preload`,
        the ids applied before and the stored rows the events write. Those last two are read
        for every record of the batch, parsed before the checkpoints and the dead letters
        are known: a superset of what the plan reads (`_plan`). In that order, as when they
        were sent one by one: the active row's lock comes first in every writer (no lock
        cycle with a swap or an erasure).

        The statements on the version's tables name its schema before the first one reads
        it: the schema the last transaction read. When a swap moved it meanwhile they are
        sent again with the right one (what the first ones locked in the old version stays
        locked until the commit: only writers following the same order lock there); when
        that version was dropped they fail, and `_apply` starts again (`_VersionGone`)."""
        schema = self.schema
        if schema is None and self._active is None:  # this store's first transaction
            schema = await db.active_schema(conn, lock=not row_held)
        guess = schema or self._active
        assert guess is not None
        batch = Batch.parse(offsets.in_order(messages), Held()) if preload else None
        active = epoch = None
        # within a pipeline already (`_apply_once`): the first `get` sends them all; a
        # nested pipeline would sync at its start (a round trip for what is queued)
        outer = upserts.in_pipeline(conn)
        guessed = schema is None
        try:
            async with nullcontext() if outer else conn.pipeline():
                if schema is None:
                    active = await reads.send(conn, db.active_read(lock=not row_held))
                if not all(m.unread for m in messages):
                    epoch = await reads.send(conn, erasure.epoch_read())
                versioned = await self._send_versioned(conn, guess, messages, batch)
            if active is not None:
                schema = await active.get()
                if schema != guess:
                    async with nullcontext() if outer else conn.pipeline():
                        versioned = await self._send_versioned(conn, schema, messages, batch)
            checkpoints, held, seen, rows = versioned
            checkpoint = await checkpoints.get()
            held_back = await held.get()
            loaded = None
            if batch is not None:
                loaded = (
                    batch,
                    set() if seen is None else await seen.get(),
                    {} if rows is None else await rows.get(),
                )
        except (errors.UndefinedTable, errors.InvalidSchemaName) as exc:
            # in a pipeline the error of a statement on the guessed version's tables shows
            # when the first result is read
            if guessed:
                raise _VersionGone from exc
            raise
        assert schema is not None
        if self.schema is None:
            self._active = schema
        if epoch is not None:
            messages = await erasure.screen_at(conn, messages, await epoch.get(), self.erased)
        cont = offsets.continuity(messages, checkpoint)
        start = _Start(schema, cont, held_back if cont.fresh else Held(), loaded)
        return start

    async def _send_versioned(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        messages: Sequence[Message],
        batch: Batch | None,
    ) -> tuple[
        reads.Pending[dict[int, int]],
        reads.Pending[Held],
        reads.Pending[set[str]] | None,
        reads.Pending[dict[Key, Row]] | None,
    ]:
        """`_start`'s reads of `schema`'s tables, sent."""
        partitions = (m.partition for m in messages)
        checkpoints = await reads.send(conn, offsets.lock_read(schema, self.topic, partitions))
        held = await reads.send(conn, deadletters.held_read(schema, self.topic, messages))
        if batch is None:
            return checkpoints, held, None, None
        ids, targets = batch.ids(), batch.targets()
        return (
            checkpoints,
            held,
            await reads.send(conn, upserts.seen_read(schema, ids)) if ids else None,
            await reads.send(conn, upserts.targets_read(conn, schema, targets))
            if targets
            else None,
        )

    async def _apply_in_waves(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        fresh: Sequence[Message],
        held: Held,
        result: ApplyResult,
        *,
        lock: bool,
    ) -> None:
        """A build's batch, planned, written and recomputed in waves: wave k holds the k-th
        event of each key of the batch, so that no customer has two events in one wave and
        the version's history has one row per event of a customer, as fine as any live
        batching could have made it (a replay's history answers `as_of` as the live one
        does). A batch costs as many recomputations as its busiest key has events (waves of
        runs without a repeated key were exact in time across keys too, but a log holding
        each customer's events together made one wave per event: ~80x slower). Always
        recomputed: the history needs it (the bulk pass's read-committed level stays)."""
        waves: list[list[Message]] = []
        depth: Counter[str | None] = Counter()
        for m in fresh:
            k = depth[m.key]
            depth[m.key] += 1
            if k == len(waves):
                waves.append([])
            waves[k].append(m)
        memo = recompute.BatchMemo()  # entitlements written once, after the last wave
        for n, wave in enumerate(waves):
            if n:
                await upserts.empty_all_staging(conn)
            part = ApplyResult()
            plan = await self._plan(conn, schema, wave, held, lock=lock)
            await self._write(conn, schema, plan, part, memo=memo)
            result.add(part)
        # in customer order, as each wave's was: concurrent jobs lock alike; what they held
        # before is in the memo (nothing to read back), and in slices: the batch of a
        # regroup holds all its subscribers (~50,000 at 1M events)
        final = sorted(memo.final.items())
        for i in range(0, len(final), recompute.BUILD_SLICE):
            await upserts.put_entitlements(conn, schema, dict(final[i : i + recompute.BUILD_SLICE]))

    async def quarantine(
        self, conn: AsyncConnection[Any], message: Message, error: BaseException
    ) -> ApplyResult:
        """Dead-letter `message` as poison (its own transaction) and move its checkpoint past
        it: for an event that fails the whole transaction deterministically (Postgres refuses
        what it becomes, or the writer raises on it). Later events of its key are parked."""
        await self._begin(conn, IsolationLevel.SERIALIZABLE)
        async with conn.transaction():
            schema = self.schema or await db.active_schema(conn, lock=True)
            (message,) = await erasure.screen(conn, [message], self.erased)
            checkpoint = await offsets.lock(conn, schema, self.topic, [message.partition])
            cont = offsets.continuity([message], checkpoint)
            result = ApplyResult(below_checkpoint=cont.below_checkpoint, gaps=cont.gaps)
            if cont.fresh and message.unread:  # forgotten, or an orphan: no letter
                result.forgotten = int(message.forgotten)
                result.orphans = int(message.orphan)
                result.next_offsets = cont.next_offsets
                await offsets.save(conn, schema, self.topic, cont.next_offsets)
            elif cont.fresh:
                letter: Letter = (message, *id_and_type(message.value), error)
                await deadletters.record(conn, schema, self.topic, [letter], "poison")
                result.poison = 1
                result.next_offsets = cont.next_offsets
                await offsets.save(conn, schema, self.topic, cont.next_offsets)
            return result

    async def _plan(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        messages: Sequence[Message],
        held: Held,
        *,
        lock: bool = False,
        loaded: tuple[Batch, set[str], dict[Key, Row]] | None = None,
    ) -> Plan:
        """Load what the batch reads (the rows its events write, the ids applied before),
        then plan it (pure: parse, fold, poison isolated, letters). `lock`: take advisory
        locks on those rows and ids first (`upserts.lock_keys`), for concurrent writers in
        READ COMMITTED. `loaded`: read already (`_start`), for a batch parsed before the
        checkpoints and the dead letters were known: used as parsed when they held back
        nothing (the usual case), else parsed again."""
        if loaded is not None:
            early, seen, current = loaded
            same = len(early.messages) == len(messages) and all(
                a is b for a, b in zip(early.messages, messages, strict=True)
            )
            held_back = held.parked_from or held.skipped
            batch = early if same and not held_back else Batch.parse(messages, held)
            return batch.plan(current, seen)
        batch = Batch.parse(messages, held)
        if lock:
            await upserts.lock_keys(
                conn,
                [
                    *batch.ids(),
                    *(f"{table}/{key}" for table, keys in batch.targets().items() for key in keys),
                ],
            )
        seen = await upserts.seen(conn, schema, batch.ids())
        current = await upserts.load_targets(conn, schema, batch.targets())
        return batch.plan(current, seen)

    async def _write(
        self,
        conn: AsyncConnection[Any],
        schema: str,
        plan: Plan,
        result: ApplyResult,
        *,
        cause: str | None = "event",
        memo: recompute.BatchMemo | None = None,
    ) -> None:
        """Write `plan`: letters, rows, dedup records, then (unless `cause` is None: replay's
        bulk pass recomputes once at the end) the entitlements of the customers reached."""
        await deadletters.record(conn, schema, self.topic, plan.poison, "poison")
        await deadletters.record(conn, schema, self.topic, plan.parked, "parked")
        await upserts.write_rows(conn, schema, plan.folded.changed)
        await upserts.mark_processed(conn, schema, plan.applied)
        if cause is not None:
            result.customers = await recompute.recompute(
                conn,
                schema,
                self.policy,
                plan.folded,
                plan.before,
                cause=cause if self.feed else "build",
                feed=self.feed,
                bound=self.regroup_chunk,
                memo=memo,
            )
        for name, value in plan.counts().items():
            setattr(result, name, value)
        result.ignored.update(plan.folded.ignored)
        if self.feed and result.applied:  # read-your-writes waiters look again
            await conn.execute("SELECT pg_notify(%s, '')", (changes.FOLDED_CHANNEL,))

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
        messages = await erasure.screen(conn, messages, self.erased)
        held = await deadletters.held(conn, schema, self.topic, messages, from_first_letter=True)
        plan = await self._plan(conn, schema, messages, held)
        if customer:
            plan.folded.customers.add(customer)
        await self._write(conn, schema, plan, result, cause="rebuild")
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
            await self._write(
                conn, schema, await self._plan(conn, schema, messages, Held()), result
            )
            if result.poison == 0:  # keep an audit trail of what was released
                await deadletters.record(conn, schema, self.topic, letters(messages), "applied")
            return result

    async def settle(self, conn: AsyncConnection[Any], *, chunks: int | None = None) -> int:
        """Recompute the customers regroups queued (see `regroup_chunk`), at most
        `regroup_chunk` per transaction, until the queue is empty (or `chunks` transactions
        ran); how many were recomputed. Each transaction is SERIALIZABLE like a batch's, and
        independent: other batches commit between them. Raises psycopg errors unchanged
        (the caller retries transient ones; what committed stays done)."""
        done = runs = 0
        limit = self.regroup_chunk or 1000
        while chunks is None or runs < chunks:
            await self._begin(conn, IsolationLevel.SERIALIZABLE)
            async with conn.transaction():
                schema = self.schema or await db.active_schema(conn, lock=True)
                n = await recompute.recompute_queued(
                    conn, schema, self.policy, limit, feed=self.feed
                )
                if n and self.feed:
                    await conn.execute("SELECT pg_notify(%s, '')", (changes.FOLDED_CHANNEL,))
            if not n:
                break
            done += n
            runs += 1
        return done

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
