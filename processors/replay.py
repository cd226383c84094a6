"""Replay: rebuild the projections from offset 0 of the log into a new version, then swap.

The rebuild runs the same fold rules and the same writer (`ProjectionStore`) as the live
worker; only the source (a plain aiokafka reader instead of the Faust agent) and the target
schema change. The live version keeps serving and the live worker keeps folding meanwhile.

The swap redefines the `live` views and the active version in one transaction, after taking
the active row FOR UPDATE (which waits for the batch the live worker may have in flight).
Each version has its own checkpoints, so after the swap the live worker's next batch finds
the new version's checkpoint: if the replay stopped short of what the worker had read, the
worker sees a gap and seeks back; if it went further, the worker skips what is covered. No
event is lost or applied twice across the swap.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from psycopg import sql
from tqdm import tqdm

from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import schema as db
from projections.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

from .pool import configure, make_pool
from .runner import BatchRunner

log = logging.getLogger(__name__)

REPLAY_BATCH = 5000


@dataclass
class ReplayReport:
    version: int
    schema: str
    events: int = 0
    seconds: float = 0.0
    swapped: bool = False
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def read_log(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    stop: dict[int, int],
    *,
    batch: int = REPLAY_BATCH,
    only_key: str | None = None,
) -> AsyncIterator[list[Message]]:
    """Batches of records of `topic` from `start` up to (excluding) `stop` per partition."""
    todo = {p: o for p, o in stop.items() if o > start.get(p, 0)}
    if not todo:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, start.get(p, 0))
        while todo:
            records = await consumer.getmany(
                *[tps[p] for p in todo], timeout_ms=1000, max_records=batch
            )
            out: list[Message] = []
            for tp, msgs in records.items():
                end = todo.get(tp.partition)
                if end is None:
                    continue
                for r in msgs:
                    if r.offset >= end:
                        break
                    key = r.key.decode("utf-8", "replace") if r.key is not None else None
                    if only_key is None or key == only_key:
                        out.append(Message(tp.partition, r.offset, key, r.value))
                if msgs and msgs[-1].offset + 1 >= end:
                    del todo[tp.partition]
                    consumer.pause(tp)
            if out:
                yield out
    finally:
        await consumer.stop()


async def _list_versions(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(
        """
        SELECT v.version, v.schema_name, v.state, v.created_at, v.activated_at,
               (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = v.schema_name AND c.relkind = 'r')::bigint AS bytes
          FROM entitled.versions v ORDER BY v.version
        """
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def create_version(conn: psycopg.AsyncConnection[Any], note: str) -> tuple[int, str]:
    async with conn.transaction():
        await conn.execute("LOCK TABLE entitled.versions IN EXCLUSIVE MODE")
        cur = await conn.execute("SELECT coalesce(max(version), 0) + 1 FROM entitled.versions")
        row = await cur.fetchone()
        assert row is not None
        version = int(row[0])
        # Secondary indexes are built after the bulk load: much faster than maintaining them.
        schema = await db.create_version_schema(conn, version, indexes=False)
        await conn.execute(
            "INSERT INTO entitled.versions (version, schema_name, state, note)"
            " VALUES (%s, %s, 'building', %s)",
            (version, schema, note),
        )
    return version, schema


async def swap(conn: psycopg.AsyncConnection[Any], version: int) -> None:
    """Make `version` the active one, atomically for readers and the live worker."""
    async with conn.transaction():
        cur = await conn.execute("SELECT version FROM entitled.active FOR UPDATE")
        row = await cur.fetchone()
        previous = None if row is None else row[0]
        cur = await conn.execute(
            "SELECT schema_name FROM entitled.versions WHERE version = %s", (version,)
        )
        target = await cur.fetchone()
        if target is None:
            raise click.ClickException(f"no version {version}")
        await conn.execute(
            "UPDATE entitled.versions SET state = 'retired' WHERE version = %s", (previous,)
        )
        await conn.execute(
            "UPDATE entitled.versions SET state = 'active', activated_at = now()"
            " WHERE version = %s",
            (version,),
        )
        await conn.execute("UPDATE entitled.active SET version = %s", (version,))
        await db.point_live_views(conn, target[0])


async def differences(
    conn: psycopg.AsyncConnection[Any], live: str, new: str
) -> list[dict[str, Any]]:
    """Customers whose entitlements differ between two versions: groups and movies gained
    or lost in `new` relative to `live`."""
    cur = await conn.execute(
        sql.SQL(
            """
            SELECT coalesce(a.customer, b.customer),
                   coalesce(a.groups, '{{}}'), coalesce(b.groups, '{{}}'),
                   coalesce(a.movie_ids, '{{}}'), coalesce(b.movie_ids, '{{}}')
              FROM {} a FULL JOIN {} b ON a.customer = b.customer
             WHERE a.groups IS DISTINCT FROM b.groups
                OR a.movie_ids IS DISTINCT FROM b.movie_ids
             ORDER BY 1
            """
        ).format(
            db.qualified(live, "customer_entitlements"), db.qualified(new, "customer_entitlements")
        ),
    )
    out = []
    for customer, g_old, g_new, m_old, m_new in await cur.fetchall():
        if not (g_old or m_old) and not (g_new or m_new):
            continue  # a row with nothing on one side only: no difference in rights
        out.append(
            {
                "customer": customer,
                "groups_gained": sorted(set(g_new) - set(g_old)),
                "groups_lost": sorted(set(g_old) - set(g_new)),
                "movies_gained": sorted(set(m_new) - set(m_old)),
                "movies_lost": sorted(set(m_old) - set(m_new)),
            }
        )
    return out


async def _fold_range(
    settings: Settings,
    schema: str,
    start: dict[int, int],
    stop: dict[int, int],
    *,
    recompute: bool,
    bar: tqdm[Any] | None = None,
) -> int:
    """Fold the records between `start` and `stop` into `schema` with the worker's writer."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    pool = make_pool(settings.database_url, max_size=2, name="replay")
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    runner = BatchRunner(settings, pool, store=store)
    read = 0
    try:
        async for batch in read_log(settings.kafka_bootstrap_servers, settings.topic, start, stop):
            result = await runner.commit(batch, recompute=recompute)
            if result.gaps:  # cannot happen with a plain reader; never skip if it does
                raise RuntimeError(f"replay found a gap: {result.gaps}")
            read += len(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        await pool.close()
    return read


async def _positions(settings: Settings, schema: str) -> tuple[dict[int, int], dict[int, int]]:
    """(checkpoints of `schema`, log end offsets) per partition."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    stop = await end_offsets(settings.kafka_bootstrap_servers, settings.topic)
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        _, start = await store.checkpoints(conn)
    return {p: start.get(p, 0) for p in stop}, stop


def _bulk_child(settings: Settings, schema: str, partitions: list[int]) -> None:
    """One replay job: the bulk pass over some partitions (in a child process)."""
    for module in settings.rule_plugins:
        importlib.import_module(module)

    async def run() -> None:
        start, stop = await _positions(settings, schema)
        mine = set(partitions)
        await _fold_range(
            settings,
            schema,
            {p: o for p, o in start.items() if p in mine},
            {p: o for p, o in stop.items() if p in mine},
            recompute=False,
        )

    asyncio.run(run())


async def _bulk(settings: Settings, schema: str, jobs: int, bar: tqdm[Any]) -> None:
    """The bulk pass: fold everything up to the current log end without recomputing
    entitlements; with `jobs` > 1, in as many processes, each owning some partitions (they
    write disjoint rows: every object's events are in one partition)."""
    start, stop = await _positions(settings, schema)
    bar.total = sum(max(0, e - start.get(p, 0)) for p, e in stop.items())
    partitions = sorted(stop)
    if jobs <= 1 or len(partitions) < 2:
        await _fold_range(settings, schema, start, stop, recompute=False, bar=bar)
        return
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_bulk_child, args=(settings, schema, partitions[j::jobs]))
        for j in range(min(jobs, len(partitions)))
    ]
    for child in children:
        child.start()
    try:
        done = 0
        while any(c.is_alive() for c in children):
            await asyncio.sleep(0.5)
            now, _ = await _positions(settings, schema)
            progress = sum(now[p] - start.get(p, 0) for p in now)
            bar.update(progress - done)
            done = progress
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise RuntimeError(f"a replay job failed (exit codes {failed}); run replay again to resume")


async def build(
    settings: Settings,
    schema: str,
    *,
    progress: bool = True,
    catch_up_within: int = 100,
    jobs: int = 1,
    bulk: bool = True,
) -> None:
    """Fold the log into `schema`, resuming from its checkpoints, until it is within
    `catch_up_within` events of the live end.

    The bulk pass (`bulk=True`) does not recompute entitlements batch by batch but once for
    every customer at its end, after the secondary indexes are built. Later passes (catching
    up with what arrived meanwhile) recompute per batch, as the worker does.
    """
    bar = tqdm(desc="replay", unit="ev", disable=not progress, smoothing=0.1)
    try:
        if bulk:
            t0 = time.perf_counter()
            await _bulk(settings, schema, jobs, bar)
            t1 = time.perf_counter()
            await _finish_bulk(settings, schema)
            log.info(
                "bulk pass %.1fs (%d jobs), indexes and entitlements %.1fs",
                t1 - t0,
                jobs,
                time.perf_counter() - t1,
            )
        while True:
            start, stop = await _positions(settings, schema)
            lag = sum(max(0, e - start.get(p, 0)) for p, e in stop.items())
            if lag <= catch_up_within:
                break
            bar.total = (bar.total or 0) + lag
            await _fold_range(settings, schema, start, stop, recompute=True, bar=bar)
    finally:
        bar.close()


async def _finish_bulk(settings: Settings, schema: str) -> None:
    """Build the secondary indexes, then recompute every customer's entitlements once."""
    assert settings.database_url
    store = ProjectionStore(settings.topic, Policy.from_settings(settings), schema=schema)
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        await configure(conn)
        cur = await conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE '%%gin%%'",
            (schema,),
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            await db.create_secondary_indexes(conn, schema)
        await store.recompute_all(conn, schema)


async def _resumable(conn: psycopg.AsyncConnection[Any]) -> tuple[int, str] | None:
    """The newest version whose build was interrupted, to continue rather than restart."""
    cur = await conn.execute(
        "SELECT version, schema_name FROM entitled.versions WHERE state = 'building'"
        " ORDER BY version DESC LIMIT 1"
    )
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


async def replay(
    settings: Settings, *, dry_run: bool = False, progress: bool = True, jobs: int = 1
) -> ReplayReport:
    """Build a new version from the log (or continue an interrupted build), then swap to
    it, or, with `dry_run`, report how it differs from the live version."""
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        await db.migrate(conn)
        live = await db.active_schema(conn)
        resumed = await _resumable(conn)
        if resumed is not None:
            version, schema = resumed
            log.info("continuing the interrupted build of v%s", version)
        else:
            version, schema = await create_version(conn, "dry run" if dry_run else "replay")
    report = ReplayReport(version, schema)
    before, _ = await _positions(settings, schema)
    t0 = time.perf_counter()
    await build(settings, schema, progress=progress, jobs=jobs)
    report.seconds = time.perf_counter() - t0
    after, _ = await _positions(settings, schema)
    report.events = sum(after.values()) - sum(before.values())
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        await conn.execute(
            "UPDATE entitled.versions SET state = 'ready' WHERE version = %s", (version,)
        )
        if dry_run:
            # Compare at one log position: finish the build right to the end first.
            await build(settings, schema, progress=False, catch_up_within=0, bulk=False)
            report.differences = await differences(conn, live, schema)
        else:
            await swap(conn, version)
            report.swapped = True
    return report


async def roll_back(settings: Settings) -> int:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        versions = await _list_versions(conn)
        active = next((v["version"] for v in versions if v["state"] == "active"), None)
        previous = [
            v["version"]
            for v in versions
            if v["state"] == "retired" and (active is None or v["version"] < active)
        ]
        if not previous:
            raise click.ClickException("no previous version to roll back to")
        await swap(conn, previous[-1])
        return int(previous[-1])


async def drop_version(settings: Settings, version: int) -> None:
    assert settings.database_url
    async with (
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn,
        conn.transaction(),
    ):
        cur = await conn.execute(
            "SELECT schema_name, state FROM entitled.versions WHERE version = %s FOR UPDATE",
            (version,),
        )
        row = await cur.fetchone()
        if row is None:
            raise click.ClickException(f"no version {version}")
        if row[1] == "active":
            raise click.ClickException("the active version cannot be dropped")
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(row[0])))
        await conn.execute("DELETE FROM entitled.versions WHERE version = %s", (version,))


def partition_of(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner (murmur2, as Java's) picks."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


async def rebuild_customer(settings: Settings, customer: str) -> dict[str, Any]:
    """Rebuild one customer's rows in place from that customer's events only.

    The customer's events all sit in one partition (keyed by customer id). We lock that
    partition's checkpoint (the live worker waits), read the partition up to it, and in the
    same transaction drop the customer's mirrored rows, dedup records and entitlements and
    fold their events again: atomically, touching no other customer.
    """
    assert settings.database_url and settings.kafka_bootstrap_servers
    # The topic's real partition count, which the producer's partitioner used.
    partition = partition_of(
        customer, len(await end_offsets(settings.kafka_bootstrap_servers, settings.topic))
    )
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    conn = await psycopg.AsyncConnection.connect(settings.database_url)
    async with conn, conn.transaction():
        schema = await db.active_schema(conn, lock=True)
        cur = await conn.execute(
            sql.SQL(
                "SELECT next_offset FROM {} WHERE topic = %s AND partition = %s FOR UPDATE"
            ).format(db.qualified(schema, "checkpoints")),
            (settings.topic, partition),
        )
        row = await cur.fetchone()
        upto = 0 if row is None else int(row[0])
        messages: list[Message] = []
        async for batch in read_log(
            settings.kafka_bootstrap_servers,
            settings.topic,
            {partition: 0},
            {partition: upto},
            only_key=customer,
        ):
            messages.extend(batch)
        for table in db.MIRROR_TABLES:
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer = %s").format(db.qualified(schema, table)),
                (customer,),
            )
        await conn.execute(
            sql.SQL('DELETE FROM {} WHERE partition = %s AND "offset" = ANY(%s)').format(
                db.qualified(schema, "processed_events")
            ),
            (partition, [m.offset for m in messages]),
        )
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE customer = %s").format(
                db.qualified(schema, "customer_entitlements")
            ),
            (customer,),
        )
        result = await store.rebuild(conn, schema, messages)
    return {
        "customer": customer,
        "partition": partition,
        "events": len(messages),
        "poison": result.poison,
    }


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            "refusing to go on without confirmation: no terminal to ask; pass --yes"
        )
    if not click.confirm(question, default=False):
        raise click.Abort()


def run_replay_command(
    settings: Settings,
    *,
    dry_run: bool,
    customer: str | None,
    rollback: bool,
    list_versions: bool,
    drop: int | None,
    yes: bool,
    jobs: int = 1,
) -> None:
    if list_versions:

        async def show() -> list[dict[str, Any]]:
            assert settings.database_url
            async with await psycopg.AsyncConnection.connect(
                settings.database_url, autocommit=True
            ) as conn:
                return await _list_versions(conn)

        for v in asyncio.run(show()):
            mark = "*" if v["state"] == "active" else " "
            click.echo(
                f"{mark} v{v['version']:<4} {v['state']:<8} {v['bytes'] / 1e6:>9.1f} MB"
                f"  created {v['created_at']:%Y-%m-%d %H:%M:%S}"
            )
        return
    if drop is not None:
        _confirm(f"Drop version {drop} for good?", yes)
        asyncio.run(drop_version(settings, drop))
        click.echo(f"dropped v{drop}")
        return
    if rollback:
        _confirm("Make the previous version active again?", yes)
        click.echo(f"active version is now v{asyncio.run(roll_back(settings))}")
        return
    if customer:
        _confirm(f"Rebuild {customer}'s rows in place from the log?", yes)
        click.echo(asyncio.run(rebuild_customer(settings, customer)))
        return
    if not dry_run:
        _confirm("Rebuild every projection from the log and swap when done?", yes)
    report = asyncio.run(replay(settings, dry_run=dry_run, progress=True, jobs=jobs))
    click.echo(
        f"v{report.version}: {report.events} events in {report.seconds:.1f}s"
        f" ({report.rate:,.0f} events/s)"
    )
    if dry_run:
        if not report.differences:
            click.echo("no differences against the live version")
        for d in report.differences:
            click.echo(
                f"{d['customer']}: groups +{d['groups_gained']} -{d['groups_lost']}"
                f" movies +{d['movies_gained']} -{d['movies_lost']}"
            )
        click.echo(f"{len(report.differences)} customers differ; nothing swapped")
    else:
        click.echo(f"swapped: v{report.version} is active")
