"""Helpers for the read API tests: a migrated database, rows in the active version, and the
app served by a real uvicorn (in a thread with its own loop, so tests stay synchronous)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import uvicorn
from psycopg.types.json import Jsonb
from starlette.routing import BaseRoute

from api.app import create_app
from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.services._process import run_async
from launcher.stripe import events as se
from projections import schema
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

# Re-exported: the tests of the read API import them from here.
from tests.support.db import demo_catalog_path as demo_catalog_path
from tests.support.db import load_catalog as load_catalog
from tests.support.db import migrate as migrate

ACTIVE = "entitled_v1"  # the version `schema.migrate` creates and activates on a fresh database


def entitle(
    database_url: str,
    customer: str,
    groups: Sequence[str] = (),
    movie_ids: Sequence[str] = (),
    as_of_event: str = "evt_test",
    *,
    feed: bool = False,
) -> None:
    """Write a customer's entitlements row into the active version; with `feed`, as the fold
    does: with a change row (and its NOTIFY) in the same transaction when what they hold
    changed (a read model learns changes from the feed)."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        before = conn.execute(
            f"SELECT groups, movie_ids FROM {ACTIVE}.customer_entitlements WHERE customer = %s",
            (customer,),
        ).fetchone()
        conn.execute(
            f"INSERT INTO {ACTIVE}.customer_entitlements"
            " (customer, groups, movie_ids, as_of_event, as_of_created)"
            " VALUES (%s, %s, %s, %s, 1700000000)"
            " ON CONFLICT (customer) DO UPDATE SET groups = excluded.groups,"
            " movie_ids = excluded.movie_ids, as_of_event = excluded.as_of_event",
            (customer, list(groups), list(movie_ids), as_of_event),
        )
        old_groups, old_movies = before if before else ([], [])
        if not feed or (sorted(old_groups), sorted(old_movies)) == (
            sorted(groups),
            sorted(movie_ids),
        ):
            return
        _insert_change(
            conn,
            customer,
            (old_groups, groups),
            (old_movies, movie_ids),
            event_id=as_of_event,
            notify=True,
        )


def mirror(
    database_url: str,
    table: str,
    record: dict[str, Any],
    refs: Sequence[str] = (),
    created: int = 1_700_000_000,
) -> None:
    """Write one mirrored Stripe object row into the active version."""
    assert table in schema.MIRROR_TABLES
    customer = record["id"] if table == "customers" else record.get("customer")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {ACTIVE}.{table}"
            " (id, customer, refs, record, v_created, v_rank, v_partition, v_offset, event_id)"
            " VALUES (%s, %s, %s, %s, %s, 0, 0, 0, 'evt_test')",
            (record["id"], customer, list(refs), Jsonb(record), created),
        )


def add_change(
    database_url: str,
    customer: str,
    groups: tuple[Sequence[str], Sequence[str]] = ((), ()),
    movies: tuple[Sequence[str], Sequence[str]] = ((), ()),
    *,
    event_id: str | None = "evt_test",
    notify: bool = True,
) -> int:
    """Write one change row as the writer does (id from its sequence, in commit order) and,
    unless `notify=False`, NOTIFY the API; its id."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        return _insert_change(conn, customer, groups, movies, event_id=event_id, notify=notify)


def _insert_change(
    conn: psycopg.Connection[Any],
    customer: str,
    groups: tuple[Sequence[str], Sequence[str]],
    movies: tuple[Sequence[str], Sequence[str]],
    *,
    event_id: str | None,
    notify: bool,
) -> int:
    """One change row in `conn`'s transaction, under the feed's lock, as the writer does."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('entitled.changes'))")
    row = conn.execute(
        "INSERT INTO entitled.changes (id, customer, groups_before, groups_after,"
        " movies_before, movies_after, cause, event_id, event_created, version)"
        " VALUES (nextval('entitled.change_ids'), %s, %s, %s, %s, %s, 'event', %s,"
        " 1700000000, 1) RETURNING id",
        (customer, list(groups[0]), list(groups[1]), list(movies[0]), list(movies[1]), event_id),
    ).fetchone()
    assert row is not None
    if notify:
        conn.execute("SELECT pg_notify('entitled_changes', %s)", (str(row[0]),))
    return int(row[0])


def fold(database_url: str, events: Sequence[dict[str, Any]], *, start: int = 0) -> None:
    """Apply events (offsets from `start` on partition 0) with the real writer."""

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        async with conn:
            messages = [
                Message(0, start + i, routing_key(e), se.encode(e)) for i, e in enumerate(events)
            ]
            await ProjectionStore(Settings().topic, Policy()).apply(conn, messages)

    run_async(go)


@contextlib.contextmanager
def running_api(
    settings: Settings, timeout: float = 30.0, *, extra_routes: Sequence[BaseRoute] = ()
) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn on 127.0.0.1:<free port>; yield its URL."""
    app = create_app(settings, extra_routes=extra_routes)
    # A graceful shutdown ends open event streams after 1 s (they never end by themselves).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        ws="none",
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # startup failure: reported by the waiting side
            errors.append(exc)

    thread = threading.Thread(target=target, name="api-uvicorn", daemon=True)
    thread.start()
    started = threading.Event()
    deadline = timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn exited during startup: {errors!r}")
        if started.wait(0.02):
            break
        deadline -= 0.02
        if deadline < 0:
            raise TimeoutError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.watcher.end_waits()
        server.should_exit = True
        thread.join(timeout)


def subscribe_events(customer: str) -> list[dict[str, Any]]:
    """A product of the "action" group and a subscription of `customer` to it."""
    product = se.product(f"prod_{customer}", groups="action", created=100)
    sub = se.subscription(
        f"sub_{customer}", customer=customer, items=[(f"price_{customer}", product["id"])]
    )
    return [
        se.event("product.created", product, created=100),
        se.event("customer.subscription.created", sub, created=200),
    ]
