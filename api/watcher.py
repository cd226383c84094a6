"""One shared watch on the database per API process: wakes whoever waits for news.

Long-polls, event streams and `min_event` reads wait for "a change was written" or "a batch
was folded". Rather than each holding a connection (or polling on its own), they wait on a
`Signal` of the process's one `Watcher`, which

- LISTENs on `entitled_changes` and `entitled_folded` on one dedicated connection (not from
  the pool) and fires the matching signal on each notification: the fast path;
- polls the feed's head and the live checkpoints every `poll_s` on that same connection and
  fires a signal when they moved: NOTIFY is not delivered to streaming replicas (LISTEN is
  refused there, and the watcher then polls every `standby_poll_s`) and is lost while the
  connection is down, so the poll is what makes waiting correct, LISTEN only makes it fast;
- reconnects with backoff when the connection fails; meanwhile `fallback_s` is short, so
  waiters check for themselves every second instead of trusting a silent watcher.

It also keeps `announced`: the newest marks (feed head, active version, catalogue writes)
the database has told it of, from each notification's payload and from each poll, and fires
`news` when they move. The read model (`api.model`) answers from memory without asking the
database only while it has applied everything announced, and only while LISTEN is in place
(`announced` is None otherwise: before the first poll after a (re)connect, on a replica).
Postgres delivers notifications in commit order, to a listening session only after their
commit: so a model current with `announced` lags the database by the notification's delivery
at most, like a replica read lags by its replay.

A waiter arms before it checks (`event = signal.armed()`, query, `await wait(event, t)`), so a
signal fired between its check and its wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
import psycopg.errors
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from projections import feed
from projections.catalog import CATALOG_CHANNEL
from projections.changes import CHANGES_CHANNEL, FOLDED_CHANNEL, VERSION_CHANNEL
from projections.search import Marks

__all__ = ["Signal", "Watcher", "wait"]

log = logging.getLogger(__name__)


class Signal:
    """A wake-up shared by any number of waiters; firing it wakes every armed waiter."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.fired = 0  # how many times it fired (`api.fanout` fetches once per firing)

    def armed(self) -> asyncio.Event:
        """The event the next `fire` sets: take it before checking, wait on it after."""
        return self._event

    def fire(self) -> None:
        self.fired += 1
        self._event.set()
        self._event = asyncio.Event()


async def wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait for an armed event at most `timeout` s; True if it was set."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


class Watcher:
    """The process's one watch on `url`: `changes` and `folded` signals, see the module doc."""

    def __init__(
        self,
        url: str,
        *,
        poll_s: float = 1.0,
        standby_poll_s: float = 0.2,
        healthy_fallback_s: float = 10.0,
        unhealthy_fallback_s: float = 1.0,
    ) -> None:
        self.url = url
        self.poll_s = poll_s
        self.standby_poll_s = standby_poll_s
        self.healthy_fallback_s = healthy_fallback_s
        self.unhealthy_fallback_s = unhealthy_fallback_s
        self.changes = Signal()
        self.folded = Signal()
        self.news = Signal()  # `announced` moved (or was lost): the read model follows it
        self.announced: Marks | None = None  # see the module doc
        self.healthy = False  # connected and polling
        self.listening = False  # and LISTEN is in place (not on a replica)
        self.notifications = 0
        self.ending = False  # the server is shutting down: waiters answer now, streams end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._marks: tuple[object, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def fallback_s(self) -> float:
        """How long a waiter may trust the watcher before it checks for itself."""
        return self.healthy_fallback_s if self.healthy else self.unhealthy_fallback_s

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="entitled-api-watcher")

    def end_waits(self) -> None:
        """Wake every waiter for good: streams end, long-polls and `min_event` reads answer.

        For a server shutdown (an event stream never ends by itself, and the server waits
        for open responses). Safe from a signal handler or another thread.
        """
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        self.ending = True
        self.changes.fire()
        self.folded.fire()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name="entitled-api-watcher"
                )
                async with conn:
                    await self._listen(conn)
                    backoff = 0.2
                    await self._serve(conn)
            except psycopg.Error as exc:
                log.warning("change watcher: %s: %s (reconnecting)", type(exc).__name__, exc)
            finally:
                was_healthy = self.healthy
                self.healthy = self.listening = False
                self._marks = None
                self.announced = None  # news may be lost from now on: nothing is trusted
                if was_healthy:  # waiters now check for themselves: wake them to learn so
                    self.changes.fire()
                    self.folded.fire()
                    self.news.fire()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _listen(self, conn: AsyncConnection[TupleRow]) -> None:
        try:
            await feed.listen_for_news(conn)
            self.listening = True
        except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.FeatureNotSupported):
            # A hot standby: "cannot execute LISTEN during recovery".
            log.info(
                "change watcher: LISTEN refused (a replica?): polling every %ss",
                self.standby_poll_s,
            )
            self.listening = False

    async def _serve(self, conn: AsyncConnection[TupleRow]) -> None:
        while True:
            await self._poll(conn)
            self.healthy = True
            interval = self.poll_s if self.listening else self.standby_poll_s
            # closed on `break` at once: the generator holds the connection's lock
            async with contextlib.aclosing(conn.notifies(timeout=interval)) as notes:
                async for note in notes:
                    self.notifications += 1
                    if note.channel == FOLDED_CHANNEL:
                        self.folded.fire()
                        continue
                    if note.channel == CHANGES_CHANNEL:
                        self.changes.fire()
                    if not self._note(note.channel, note.payload):
                        break  # a payload without its mark: poll at once to learn it

    def _note(self, channel: str, payload: str) -> bool:
        """Take the mark a notification carries into `announced`; False if it carries none."""
        try:
            value = int(payload)
        except ValueError:
            return False
        if channel == CHANGES_CHANNEL:
            self.announce(head=value)
        elif channel == VERSION_CHANNEL:
            self.announce(version=value)
        elif channel == CATALOG_CHANNEL:
            self.announce(catalog=value)
        return True

    def announce(
        self, *, head: int | None = None, version: int | None = None, catalog: int | None = None
    ) -> None:
        """News of the database: change ids and catalogue counts only grow; the version is
        the last announced (a rollback goes back), notifications arrive in commit order. Also
        for a write this process made itself (`api.app`'s catalogue routes), so that its own
        next search does not wait for the notification. Nothing while nothing is trusted."""
        had = self.announced
        if had is None:
            return
        now = Marks(
            had.head if head is None else max(had.head, head),
            had.version if version is None else version,
            had.catalog if catalog is None else max(had.catalog or 0, catalog),
        )
        if now != had:
            self.announced = now
            self.news.fire()

    async def _poll(self, conn: AsyncConnection[TupleRow]) -> None:
        try:
            marks = await feed.marks(conn)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return  # not migrated yet: nobody can be waiting on anything
        # After a (re)connect every waiter checks again: news may have come meanwhile.
        if self._marks is None or marks[:1] != self._marks[:1]:
            self.changes.fire()
        if self._marks is None or marks[1:3] != self._marks[1:3]:
            self.folded.fire()
        self._marks = marks
        # A snapshot taken after every notification handled so far (those that arrive during
        # this poll are handled after it, in order): as new as anything announced, and
        # what a lost notification announced (the feed's head) shows here within `poll_s`.
        if not self.listening:
            return  # news may come unannounced (a replica): nothing is trusted
        head, _, version, catalog = marks
        polled = Marks(int(head), version, None if catalog is None else int(catalog))
        if self.announced is None:
            self.announced = polled
            self.news.fire()
        else:
            self.announce(head=polled.head, version=polled.version, catalog=polled.catalog)
