"""The read model: searches answered from memory, as fresh as the change feed says.

A search is two facts: the catalogue's answer to the query (which movies, in which order) and
what the customer holds (groups, movie ids). The API process keeps both, LRU-bounded:

- `customers`: customer -> (feed id it is current as of, groups, movie ids). A miss reads the
  customer's row and the feed's head in one snapshot (`search.model_read`). The change feed
  (`entitled.changes`, ids in commit order: one row per customer whose entitlements changed,
  written in the same transaction) updates it: a change newer than an entry replaces it; an
  older one (already in the row that was read) is ignored.
- `answers`: (q, limit, within) -> the catalogue's movies, valid for one count of catalogue
  writes (`entitled.catalog_mark`, bumped by every write after or with it).

Freshness (docs/http.md, "How fresh a search is"). Postgres announces every change row, every
catalogue write and every version swap by NOTIFY, delivered after the commit and in commit
order; the process's `Watcher` LISTENs and keeps `announced`, the newest marks (feed head,
active version, catalogue count) it was told of. The model is *current* when it has applied
everything announced: feed applied up to the announced head, the announced version, answers
of the announced catalogue count, and LISTEN in place. A current model answers a search from
memory without asking the database: its answer lags the database by the delivery of a
notification at most (milliseconds; a replica read lags by its replay). `follow` applies what
is announced as it comes, so the model is current again a round trip after each news.

A model that is not current (LISTEN down or not yet back, news not applied yet: a change row,
a catalogue write, a replay swap or a rollback) never answers from memory alone: the search
takes the database's marks (feed head, active version, catalogue count) from a snapshot taken
after it arrived (`_Barrier`: one small query serves every search that arrived before it was
sent), catches the model up to them (a new version empties it; a new catalogue count empties
the answers) and answers: never older than what the database read path returns at that
moment. `min_event` keeps its exact meaning: the database says the event is folded, then the
model answers as of a snapshot taken after that.

Where it reads: `connect` is one database's connections (`api.readers` picks the primary or a
replica per search, as the database read path does), so a search takes its marks, catches up
and reads what it lacks on the one database that answers it, and the model keeps working with
the primary down. Databases differ only by lag: the model never goes back (an entry read
from a database behind what the model has applied is answered but not kept), and a version
seen on one replica and not yet on another flushes it as a swap does. What the primary
announced and a lagging replica has not replayed keeps the model not current until it has.

Memory: an entry costs about 200-250 bytes (the key, a tuple, the LRU link; the groups and
movie tuples are shared between customers who hold the same); `bench/search.py` prints the
figure measured for 1,000,000 customers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

from psycopg import AsyncConnection

from api.watcher import Watcher, wait
from projections import feed, search
from projections.search import Hit, Marks

__all__ = ["ReadModel"]

log = logging.getLogger(__name__)

Within = tuple[Collection[str], Collection[str]] | None
Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]
Step = Callable[[Connect], Awaitable[None]]
Run = Callable[[Step], Awaitable[None]]  # runs a step on one database (`Readers.run`)
Entry = tuple[int, tuple[str, ...], tuple[str, ...]]  # (feed id, groups, movie ids)
Movies = list[tuple[str, str, list[str]]]  # (movie id, title, groups), best first
_FETCH = 1000
_BEHIND_RETRY_S = 0.1  # `follow` after a round that left the model behind (a lagging replica)


class _Barrier:
    """Marks from a snapshot taken after the call: callers that arrive while no query is
    being sent share the next one."""

    def __init__(self) -> None:
        self._next: asyncio.Future[Marks] | None = None
        self._lock = asyncio.Lock()
        self._sending: set[asyncio.Task[None]] = set()

    async def marks(self, connect: Connect) -> Marks:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._send(connect))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return await asyncio.shield(self._next)

    async def _send(self, connect: Connect) -> None:
        async with self._lock:  # one query at a time; later callers wait for the next one
            future, self._next = self._next, None
            assert future is not None
            try:
                async with connect() as conn:
                    future.set_result((await search.model_read(conn)).marks)
            except BaseException as exc:
                future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise


class ReadModel:
    """See the module doc."""

    def __init__(
        self, watcher: Watcher, *, max_customers: int = 250_000, max_answers: int = 20_000
    ) -> None:
        self.watcher = watcher
        self.max_customers = max_customers
        self.max_answers = max_answers
        self.customers: OrderedDict[str, Entry] = OrderedDict()
        self.answers: OrderedDict[tuple[Any, ...], list[tuple[str, str, list[str]]]] = OrderedDict()
        self.top: int | None = None  # feed id applied up to (None: not started)
        self.version: int | None = None  # active version the entries belong to
        self.catalog: int | None = None  # catalogue write count the answers belong to
        self.hits = self.misses = self.flushes = 0
        self.checked = 0  # hits that asked the database for its marks first (not current)
        self._barriers: dict[str, _Barrier] = {}  # one per database searches go to
        self._cold = True  # flushed (or never filled) and not warmed up since
        self._catching_up = asyncio.Lock()
        self._shared: dict[tuple[str, ...], tuple[str, ...]] = {}  # interned tuples

    async def search(
        self,
        connect: Connect,
        customer: str,
        q: str,
        limit: int,
        within: Within,
        *,
        via: str | None = "primary",
    ) -> list[Hit]:
        """What `projections.search.search` answers on the database `connect` reaches
        (named `via`), from memory where it can.

        Both parts in memory and the model current (module doc): the answer, no database.
        Both in memory, not current: the marks of a snapshot taken after the search arrived
        (shared with concurrent searches on the same database; `via=None`: not shared,
        `connect` is a connection this search holds, as for `min_event`) say what memory
        must have applied before it answers. A part missing: one statement reads it with its
        snapshot's marks, which say whether the other part (if in memory) is current. Memory
        is brought up to the marks before it answers."""
        key = _key(q, limit, within)
        movies = self.answers.get(key)
        entry = self.customers.get(customer)
        if movies is not None and entry is not None and via is not None and self.current():
            self.hits += 1
            self.customers.move_to_end(customer)
            self.answers.move_to_end(key)
            return [_hit(m, t, g, entry[1], entry[2]) for m, t, g in movies]
        read_entry = read_movies = False
        if movies is not None and entry is not None:
            if via is None:
                async with connect() as conn:
                    marks = (await search.model_read(conn)).marks
            else:
                marks = await self._barriers.setdefault(via, _Barrier()).marks(connect)
        else:
            async with connect() as conn:
                read = await search.model_read(
                    conn,
                    customer=customer if entry is None else None,
                    q=q if movies is None else None,
                    limit=limit,
                    within=within,
                )
            marks = read.marks
            if read.holdings is not None:
                entry, read_entry = (marks.head, *read.holdings), True
                self._keep_customer(customer, entry, marks)
            if read.movies is not None:
                movies, read_movies = read.movies, True
                self._keep_answer(key, movies, marks)
        if marks.version is None or marks.catalog is None:  # not migrated this far
            async with connect() as conn:
                return await search.search(conn, customer, q, limit, within=within)
        if not self._current(marks):
            await self.catch_up(connect, marks)
        self._see_catalog(marks.catalog)
        # What memory holds now is at least as new as `marks`; what this search read is as
        # new as `marks`. A part taken from memory before and gone since (evicted, or a
        # newer catalogue) is read again.
        kept_entry, kept_movies = self.customers.get(customer), self.answers.get(key)
        entry = kept_entry if kept_entry is not None else entry if read_entry else None
        movies = kept_movies if kept_movies is not None else movies if read_movies else None
        if entry is None or movies is None:
            return await self.search(connect, customer, q, limit, within, via=via)
        if read_entry or read_movies:
            self.misses += 1
        else:
            self.hits += 1
            self.checked += 1
            self.customers.move_to_end(customer)
            self.answers.move_to_end(key)
        _, groups, held = entry
        return [_hit(m, t, g, groups, held) for m, t, g in movies]

    def answer_now(
        self, customer: str, q: str, limit: int, within: Within
    ) -> list[dict[str, Any]] | None:
        """The search's results as `Hit.to_json` renders them, from memory alone, when the
        model is current and holds both parts (module doc); None: ask `search`. The hot
        path of a search: no coroutine, no `Hit` objects, one dict per movie."""
        key = _key(q, limit, within)
        movies = self.answers.get(key)
        if movies is None:
            return None
        entry = self.customers.get(customer)
        if entry is None or not self.current():
            return None
        self.hits += 1
        self.customers.move_to_end(customer)
        self.answers.move_to_end(key)
        _, held_groups, held_movies = entry
        results = []
        for movie_id, title, groups in movies:
            reason = _reason(movie_id, groups, held_groups, held_movies)
            results.append(
                {
                    "movie_id": movie_id,
                    "title": title,
                    "groups": groups,
                    "available": reason is not None,
                    "reason": reason,
                }
            )
        return results

    def _keep_customer(self, customer: str, entry: Entry, marks: Marks) -> None:
        if marks.version != self.version or self.top is None:
            return  # read from another version than memory holds: answer, keep nothing
        if entry[0] < self.top:
            # Read from a database behind what the model applied (a lagging replica, or the
            # feed ran ahead meanwhile): a change in between may have been applied and then
            # evicted, so this entry may be older than the model: answer, keep nothing.
            return
        entry = (entry[0], self._intern(entry[1]), self._intern(entry[2]))
        have = self.customers.get(customer)
        if have is not None and have[0] >= entry[0]:
            return  # the feed brought something as new while this read ran
        self._remember(self.customers, customer, entry, self.max_customers)

    def _keep_answer(self, key: tuple[Any, ...], movies: Movies, marks: Marks) -> None:
        if marks.catalog is None:
            return
        self._see_catalog(marks.catalog)
        if marks.catalog == self.catalog:
            self._remember(self.answers, key, movies, self.max_answers)

    def _see_catalog(self, count: int) -> None:
        """A catalogue write count seen in some snapshot: answers of older counts go."""
        if self.catalog is None or count > self.catalog:
            self.answers.clear()
            self.catalog = count

    # -- following the feed -------------------------------------------------------------

    async def follow(self, run: Run) -> None:
        """Apply what the database announces as it comes (a task of the app's lifespan);
        `run` gives each round one database (the replicas in turn, or the primary)."""
        while True:
            armed = self.watcher.news.armed()
            try:
                await run(self._follow_once)
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres away: searches catch up themselves, or fail
                log.warning("read model: could not follow the change feed", exc_info=True)
                await wait(armed, self.watcher.fallback_s)
                continue
            # Still behind what was announced: the database this round read had not replayed
            # it yet (a replica); try again soon rather than at the next news.
            behind = self._announced() is not None and not self.current()
            await wait(armed, _BEHIND_RETRY_S if behind else self.watcher.fallback_s)

    async def _follow_once(self, connect: Connect) -> None:
        await self.catch_up(connect)
        if self._cold:  # started, or a new version: warm up again
            await self.warm(connect)

    def _announced(self) -> Marks | None:
        """What the database announced, while LISTEN is in place; None: nothing is trusted."""
        marks = self.watcher.announced
        if not self.watcher.listening or marks is None or marks.version is None:
            return None
        return marks

    def current(self) -> bool:
        """True when memory holds everything the database announced (module doc): a search
        may answer from it without asking the database."""
        marks = self._announced()
        return (
            marks is not None
            and self._current(marks)
            and self.catalog is not None
            and marks.catalog is not None
            and self.catalog >= marks.catalog
        )

    def _current(self, marks: Marks) -> bool:
        return self.top is not None and self.top >= marks.head and self.version == marks.version

    async def catch_up(self, connect: Connect, marks: Marks | None = None) -> None:
        """Apply the feed after `top` (at least up to `marks`); empty the model and start at
        the head when the active version moved."""
        async with self._catching_up:
            if marks is not None and self._current(marks):
                return  # another search caught up meanwhile
            async with connect() as conn:
                marks = (await search.model_read(conn)).marks
                if marks.catalog is not None:
                    self._see_catalog(marks.catalog)
                if self.top is None or marks.version != self.version:
                    self.flush()
                    self.top, self.version = marks.head, marks.version
                    return
                while True:
                    page = await feed.page_after(conn, self.top, _FETCH)
                    for c in page.changes:
                        self._apply(c.id, c.customer, c.groups_after, c.movies_after)
                    if page.changes:
                        self.top = max(self.top, page.changes[-1].id)
                    if len(page.changes) < _FETCH:
                        break
                # the pages were read after `marks`: they reach at least its head
                self.top = max(self.top, marks.head)

    async def warm(self, connect: Connect) -> int:
        """Load the customers' holdings (up to the bound) without holding up searches: an
        entry the feed or a search brought meanwhile is newer and stays."""
        version = self.version
        async with connect() as conn:
            marks, rows = await search.all_holdings(conn, self.max_customers)
        if marks.version != version or marks.version != self.version:
            return 0  # another swap meanwhile: the next round warms up
        if self.top is None or marks.head < self.top:
            # read from a database behind what the model applied meanwhile (another
            # replica): an entry of this snapshot may be older than a change applied and
            # evicted since; the next round warms up
            return 0
        self._cold = False
        added = 0
        for customer, groups, movies in rows:
            have = self.customers.get(customer)
            if have is None or have[0] < marks.head:
                if have is None and len(self.customers) >= self.max_customers:
                    continue  # what searches brought is more recent than a bulk load
                self.customers[customer] = (
                    marks.head,
                    self._intern(tuple(sorted(groups))),
                    self._intern(tuple(movies)),
                )
                added += 1
        return added

    def _apply(self, change_id: int, customer: str, groups: list[str], movies: list[str]) -> None:
        have = self.customers.get(customer)
        if have is not None and have[0] >= change_id:
            return
        entry = (change_id, self._intern(tuple(sorted(groups))), self._intern(tuple(movies)))
        self._remember(self.customers, customer, entry, self.max_customers)

    def flush(self) -> None:
        self.customers.clear()
        self.answers.clear()
        self._shared.clear()
        self._cold = True
        self.flushes += 1

    def _intern(self, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            return ()
        if len(self._shared) >= 100_000:  # a bound, in case every customer is unique
            return value
        return self._shared.setdefault(value, value)

    @staticmethod
    def _remember(store: OrderedDict[Any, Any], key: Any, value: Any, bound: int) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > bound:
            store.popitem(last=False)


def _key(q: str, limit: int, within: Within) -> tuple[Any, ...]:
    return (q, limit) if within is None else (q, limit, *map(frozenset, within))


def _reason(
    movie_id: str, groups: list[str], held_groups: tuple[str, ...], held_movies: tuple[str, ...]
) -> str | None:
    # As `projections.search._REASON`: a subscription wins over a purchase.
    for group in groups:
        if group in held_groups:
            return "subscription"
    return "purchase" if movie_id in held_movies else None


def _hit(
    movie_id: str,
    title: str,
    groups: list[str],
    held_groups: tuple[str, ...],
    held_movies: tuple[str, ...],
) -> Hit:
    return Hit(movie_id, title, groups, _reason(movie_id, groups, held_groups, held_movies))
