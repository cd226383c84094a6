"""The test database: migrate it and load a catalogue in-process; read it: one `query`, the
live entitlements and checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.kafka import client_options
from entitled.settings import Settings
from entitled.topics import end_offsets
from launcher.services._process import run_async
from projections import catalog, schema


def migrate(database_url: str) -> None:
    """`entitled migrate`, in-process."""

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await schema.migrate(conn)  # type: ignore[arg-type]
            await conn.commit()

    run_async(go)


def demo_catalog_path() -> Path:
    return Path(str(resources.files("projections").joinpath("demo_catalog.jsonl")))


def load_catalog(database_url: str, movies: Sequence[catalog.Movie] | None = None) -> None:
    """`entitled catalog load` (the demo catalogue unless `movies`), in-process."""
    rows = list(movies) if movies is not None else list(catalog.read_file(demo_catalog_path()))

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url)
        async with conn, conn.transaction():
            await catalog.load_movies(conn, rows)

    run_async(go)


def query(settings: Settings, q: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement on the test's database (autocommit, `%s` placeholders)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(q, args or None).fetchall()


def entitlements(settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """customer -> (groups, movie ids) of the live version ({} before the schema exists)."""
    try:
        rows = query(settings, "SELECT customer, groups, movie_ids FROM live.customer_entitlements")
    except psycopg.errors.UndefinedTable:
        return {}
    return {c: (g, m) for c, g, m in rows}


def active_schema(settings: Settings) -> str:
    """The schema (`entitled_vN`) of the active projection version."""
    rows = query(
        settings,
        "SELECT v.schema_name FROM entitled.active a JOIN entitled.versions v USING (version)",
    )
    return str(rows[0][0])


def processed_count(settings: Settings) -> int:
    """Events applied to the active version so far (0 while Postgres is unreachable)."""
    try:
        schema = active_schema(settings)
        return int(query(settings, f"SELECT count(*) FROM {schema}.processed_events")[0][0])
    except (psycopg.Error, IndexError):
        return 0


def progress(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """(log end, live checkpoint) per partition of the test's topic."""
    ends = run_async(lambda: end_offsets(settings))
    cps = dict(
        query(
            settings,
            "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
            settings.topic,
        )
    )
    return ends, cps


def caught_up(settings: Settings) -> bool:
    """Every partition's live checkpoint has reached the log end (False before the schema
    exists and while a service is down)."""
    try:
        ends = _POLLS.log_ends(settings)
        cps = dict(
            _POLLS.rows(
                settings,
                "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
                settings.topic,
            )
        )
    except Exception:  # either service briefly unreachable, or no schema yet: not caught up
        return False
    return all(cps.get(p, 0) >= e for p, e in ends.items())


class _Polls:
    """A Kafka client and Postgres connections kept open for `caught_up`, which most tests
    poll a few times a second: a new client and a new connection per poll cost ~34 ms of CPU
    (the broker's and the server's share included), kept ones ~4 ms. Any error drops what
    failed (a restarted service, a dropped database): the next poll opens it afresh."""

    KEEP = 4  # connections kept (one per test database, the latest ones)
    TIMEOUT_S = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumers: dict[tuple[tuple[str, str], ...], AIOKafkaConsumer] = {}
        self._conns: OrderedDict[str, psycopg.Connection[Any]] = OrderedDict()

    def log_ends(self, settings: Settings) -> dict[int, int]:
        """The log end offset of every partition of the settings' topic."""
        key = tuple(sorted(settings.kafka_env().items()))
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="polls", daemon=True).start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(self._ends(key, settings), loop)
        return future.result(self.TIMEOUT_S + 5)

    async def _ends(self, key: tuple[tuple[str, str], ...], settings: Settings) -> dict[int, int]:
        consumer = self._consumers.get(key)
        try:
            if consumer is None:
                consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
                self._consumers[key] = consumer
                await asyncio.wait_for(consumer.start(), self.TIMEOUT_S)
            topic = settings.topic
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()  # no public call forces a fetch
                partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await asyncio.wait_for(consumer.end_offsets(tps), self.TIMEOUT_S)
            return {tp.partition: off for tp, off in ends.items()}
        except BaseException:
            if consumer is not None:
                self._consumers.pop(key, None)
                with contextlib.suppress(Exception):
                    await consumer.stop()
            raise

    def rows(self, settings: Settings, q: str, *args: Any) -> list[tuple[Any, ...]]:
        """`query`, on a connection kept for the settings' database."""
        url = settings.database_url
        assert url
        with self._lock:
            conn = self._conns.pop(url, None)
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
            try:
                rows = conn.execute(q, args or None).fetchall()
            except BaseException:
                conn.close()
                raise
            self._conns[url] = conn
            while len(self._conns) > self.KEEP:
                self._conns.popitem(last=False)[1].close()
            return rows


_POLLS = _Polls()
