"""Worker failover in about a second, whatever the broker's minimum session timeout.

Kafka moves a dead worker's partitions only once the group coordinator removes it: at the end
of its session timeout (6 s: the lowest a stock or managed broker accepts), unless someone
removes it before. Postgres knows sooner: each worker holds an advisory lock on a connection
of its own (`projections.members`), and a SIGKILLed worker's connection closes with it, which
releases the lock at once. So:

- each worker joins the group as a static member (KIP-345, `group.instance.id` = its worker
  id) and records its member id beside its lock;
- every `POLL_S` each worker looks for copies whose lock is free; for each, it removes exactly
  that member (LeaveGroup v3 with member id and instance id: what Kafka's
  `AdminClient.removeMembersFromConsumerGroup` sends; aiokafka has no admin call for it) from
  the group, which rebalances at once: the survivors hear of it at their next heartbeat;
- a clean stop leaves the group itself (`processors.transport`: a static member's consumer
  sends no LeaveGroup on its own);
- two running copies can never share an id (the lock); a restarted copy may take its id back
  (where folding resumes is still the Postgres checkpoint's business).

A copy whose host vanishes without closing its TCP connection (power cut, network partition)
keeps its lock until Postgres's TCP keepalive notices: the session timeout bounds that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any, TypeAlias

import psycopg
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from entitled.kafka import client_options
from entitled.settings import Settings
from projections import members

__all__ = ["Membership", "WorkerIdTaken", "claim_membership"]

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a worker looks for dead copies (one small query)
_REMOVE_TIMEOUT_S = 2.0  # a survivor holds a dead copy's lock at most this long
_CLAIM_PATIENCE_S = 5.0  # so a restarted copy waits this long for its own id
_MAX_SLOTS = 1000


class WorkerIdTaken(Exception):
    """Another running copy holds this worker id."""


# LeaveGroup v3 (KIP-345): members named by member id and group instance id. Not flexible
# (v4 is), so the classic header and strings.
class _LeaveGroupResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


_Structs: TypeAlias = _LeaveGroupRequest_v3


class _RemoveMembers(Request[_Structs]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group: str, identities: list[tuple[str, str]]) -> None:
        self._group = group
        self._identities = identities

    def build(self, request_struct_class: type[_Structs]) -> _Structs:
        return request_struct_class(self._group, self._identities)


async def remove_member(client: AIOKafkaClient, group: str, member_id: str, instance: str) -> int:
    """Remove one static member from `group`; the Kafka error code (0: removed; 25
    UNKNOWN_MEMBER_ID: it was gone already; 82 FENCED_INSTANCE_ID: a newer copy holds the
    instance id)."""
    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
    resp: Any = await client.send(
        node, _RemoveMembers(group, [(member_id, instance)]), group=ConnectionGroup.COORDINATION
    )
    if resp.error_code:
        return int(resp.error_code)
    return max((int(m[2]) for m in resp.members), default=0)


def default_host() -> str:
    return socket.gethostname() or "worker"


class Membership:
    """One worker's identity in the group and its watch over the others (see the module)."""

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.AsyncConnection[Any],
        instance_id: str,
        group: str | None = None,
    ) -> None:
        self.settings = settings
        self.group = group or settings.consumer_group  # the worker's, or the hydrator's
        self.instance_id = instance_id
        self.member_id = ""
        self._conn: psycopg.AsyncConnection[Any] | None = conn
        self._client: AIOKafkaClient | None = None
        self._seen: set[tuple[str, str]] = set()  # peers seen holding their lock
        self._since = time.monotonic()  # when `_conn` was opened
        self.removed = 0  # dead copies removed from the group

    async def joined(self, member_id: str) -> None:
        """Our consumer joined (or rejoined) as `member_id`: say so beside the lock (now, or
        when the watch has reconnected to Postgres)."""
        if not member_id or member_id == self.member_id:
            return
        self.member_id = member_id
        if self._conn is not None:
            await members.joined(self._conn, self.group, self.instance_id, member_id)

    async def watch(self) -> None:
        """Remove dead copies from the group, for ever (an app task)."""
        failures = 0
        while True:
            try:
                await self._sweep()
                failures = 0
            except psycopg.Error as exc:  # Postgres away (our lock went too): reconnect
                failures += 1
                if failures == 1:  # once per outage, not five times a second
                    log.warning("could not look for dead workers (reconnecting): %s", exc)
                await self._drop_conn()
            except Exception:  # a bug: logged, and the watch goes on
                log.exception("could not look for dead workers")
            # Back off to 1 s while Postgres is away (a restart takes seconds).
            await asyncio.sleep(min(1.0, POLL_S * (1 + failures)))

    async def _sweep(self) -> None:
        conn = self._conn or await self._reconnect()
        if conn is None:
            return
        # Right after our connection (re)opened, a free lock may be a copy that has not
        # reconnected yet (Postgres restarted: every lock went): only a copy seen alive on
        # this connection counts as dead until a session timeout has passed.
        patient = time.monotonic() - self._since < self.settings.kafka_session_timeout_s
        for peer in await members.peers(conn, self.group, self.instance_id):
            key = (peer.instance_id, peer.member_id)
            if not peer.free:
                self._seen.add(key)
                continue
            if patient and key not in self._seen:
                await members.release(conn, self.group, peer.instance_id)
                continue
            took = time.monotonic()
            code = await self._remove(peer) if peer.member_id else 0
            if code not in (0, 25, 82):  # not removed: let go (a restart may claim the id
                await members.release(conn, self.group, peer.instance_id)  # back) and retry
                continue
            await members.forget(conn, self.group, peer)
            self._seen.discard(key)
            self.removed += 1
            log.info(
                "worker %s is gone (its Postgres session ended): removed member %s from the"
                " group in %.3f s (Kafka code %d)",
                peer.instance_id,
                peer.member_id or "(never joined)",
                time.monotonic() - took,
                code,
            )

    async def _remove(self, peer: members.Peer) -> int:
        """Remove `peer` from the group; its Kafka error code, -1 when Kafka did not answer
        within `_REMOVE_TIMEOUT_S` (we hold the peer's lock meanwhile: not for long)."""
        try:
            async with asyncio.timeout(_REMOVE_TIMEOUT_S):
                if self._client is None:
                    client = AIOKafkaClient(**client_options(self.settings))
                    self._client = client
                    await client.bootstrap()
                return await remove_member(
                    self._client, self.group, peer.member_id, peer.instance_id
                )
        except Exception as exc:  # Kafka away: our Postgres connection (our lock) stays
            log.warning("could not remove dead worker %s: %r", peer.instance_id, exc)
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            return -1

    async def _reconnect(self) -> psycopg.AsyncConnection[Any] | None:
        """Open a new connection and take our own lock back (it went with the old one)."""
        assert self.settings.database_url
        conn = await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True, connect_timeout=5
        )
        if not await members.claim(conn, self.group, self.instance_id, default_host(), os.getpid()):
            # A survivor removing us, or a copy that took our id while we were away.
            await conn.close()
            log.warning("worker id %s is held by another session; trying again", self.instance_id)
            return None
        if self.member_id:
            await members.joined(conn, self.group, self.instance_id, self.member_id)
        self._conn, self._since = conn, time.monotonic()
        self._seen.clear()
        return conn

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is broken: that is why it goes
                await conn.close()

    async def close(self) -> None:
        """A clean stop (after our consumer left the group): the row and the lock go."""
        if self._conn is not None:
            try:
                await members.leave(self._conn, self.group, self.instance_id)
            except Exception:  # the lock goes with the connection anyway
                log.warning("could not remove worker %s's row", self.instance_id, exc_info=True)
        await self._drop_conn()
        if self._client is not None:
            await self._client.close()
            self._client = None


async def claim_membership(settings: Settings, group: str | None = None) -> Membership:
    """Take this copy's worker id in `group` (default: the worker's; the hydrator passes its
    own): ENTITLED_WORKER_ID, which no running copy of the group may hold (a clear error),
    else `<host name>-<n>` with the lowest n no running copy holds."""
    assert settings.database_url
    conn = await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, connect_timeout=5
    )
    try:
        host, pid, group = default_host(), os.getpid(), group or settings.consumer_group
        if settings.worker_id:
            deadline = time.monotonic() + _CLAIM_PATIENCE_S
            while not await members.claim(conn, group, settings.worker_id, host, pid):
                if time.monotonic() > deadline:
                    raise WorkerIdTaken(
                        f"ENTITLED_WORKER_ID={settings.worker_id} is held by another running"
                        f" worker of group {group}: give every copy its own id"
                    )
                await asyncio.sleep(POLL_S)
            return Membership(settings, conn, settings.worker_id, group)
        for n in range(_MAX_SLOTS):
            if await members.claim(conn, group, f"{host}-{n}", host, pid):
                return Membership(settings, conn, f"{host}-{n}", group)
        raise WorkerIdTaken(f"{_MAX_SLOTS} workers of group {group} on {host}?")
    except BaseException:
        await conn.close()
        raise
