"""Shared helpers of the fold and replay benchmarks: services, a fresh database, a fast
topic fill from the workload generator, child processes, and the results file.

Benchmarks never import `tests/`: what they need of the test helpers is re-done here, small.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from entitled.settings import Settings
from launcher.workload import Workload

RESULTS = Path(__file__).parent / "results"
ENTITLED = [sys.executable, "-m", "launcher.cli"]
_FILL_CHUNK = 2000  # events per message between the generator process and the producer


# -- services and a fresh database ------------------------------------------------------


@contextlib.contextmanager
def bench_settings(name: str) -> Iterator[Settings]:
    """Settings with a fresh topic and a fresh database, on KAFKA_BOOTSTRAP_SERVERS /
    DATABASE_URL when set, else on local services started in a temp home (wiped after)."""
    settings = Settings.from_env()
    temp_home: Path | None = None
    if not settings.kafka_bootstrap_servers or not settings.database_url:
        temp_home = Path(tempfile.mkdtemp(prefix=f"entitled-bench-{name}-"))
        temp_home.chmod(0o755)  # the postgres user must traverse it
        settings = dataclasses.replace(settings, home=temp_home)
        from launcher import services

        print(f"starting Kafka and Postgres in {temp_home} ...", flush=True)
        ep = services.endpoints(settings)
        settings = dataclasses.replace(ep.kafka_settings(settings), database_url=ep.database_url)
    from entitled.crypto import new_master_key

    tag = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        settings,
        topic=f"bench.{name}.{tag}",
        consumer_group=f"bench-{name}-{tag}",
        master_key=new_master_key(),
        keys_topic=f"bench.{name}.{tag}.keys",
    )
    try:
        yield settings
    finally:
        if temp_home is not None:
            from launcher import services

            services.down(settings, wipe=True)
            shutil.rmtree(temp_home, ignore_errors=True)


def fresh_database(settings: Settings, label: str) -> Settings:
    """`settings` pointing at a new empty database on the same server."""
    import psycopg
    from psycopg import sql

    assert settings.database_url
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    from urllib.parse import urlsplit, urlunsplit

    # the path only: the query may name files (sslrootcert=/path/ca.crt)
    url = urlunsplit(urlsplit(settings.database_url)._replace(path=f"/{name}"))
    return dataclasses.replace(settings, database_url=url)


def drop_database(admin: Settings, fresh: Settings) -> None:
    """Drop the database `fresh_database` made (`fresh`), through `admin`'s."""
    from urllib.parse import urlsplit

    import psycopg
    from psycopg import sql

    assert admin.database_url and fresh.database_url
    name = urlsplit(fresh.database_url).path.lstrip("/")
    with psycopg.connect(admin.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def migrate(database_url: str) -> str:
    import psycopg

    from projections import schema

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        active = await schema.migrate(conn)
        await conn.commit()
    return active


# -- filling a topic fast ----------------------------------------------------------------


def _generate(customers: int, limit: int, seed: int, regroup_every: int, queue: Any) -> None:
    """Generator process: encode the workload once, in chunks of (key, value, headers)."""
    from ingest.keys import event_headers, routing_key
    from launcher.stripe import events as se

    chunk: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    workload = Workload(customers=customers, seed=seed, regroup_every=regroup_every)
    for n, event in enumerate(workload.events(), start=1):
        chunk.append(
            (
                routing_key(event).encode(),
                se.encode(event),
                event_headers(event, source="backfill", received_at=time.time()),
            )
        )
        if len(chunk) >= _FILL_CHUNK or n >= limit:
            queue.put(chunk)
            chunk = []
        if n >= limit:
            break
    if chunk:
        queue.put(chunk)
    queue.put(None)


async def _produce(settings: Settings, queue: Any, seal: bool) -> tuple[int, int]:
    """Write the generated chunks; with `seal`, each value sealed with its subject's data key
    as every writer of the log does (`entitled.keyring`)."""
    from aiokafka import AIOKafkaProducer

    from entitled.kafka import client_options
    from entitled.keyring import Keyring

    topic = settings.topic
    keyring = Keyring(settings) if seal else None
    if keyring is not None:
        await keyring.start()
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        compression_type=None,
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    count = size = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        while True:
            chunk = await loop.run_in_executor(None, queue.get)
            if chunk is None:
                break
            if keyring is not None:
                # The whole chunk sealed first (the key writes of its new subjects
                # concurrently), then sent: sealing one event at a time between sends made
                # the producer send small record batches while each key write was awaited,
                # and reading a log of small batches costs ~3 us a record more than the plain
                # fill's big ones: a layout difference, not the encryption's cost.
                sealed = await asyncio.gather(
                    *(keyring.seal(key.decode(), value) for key, value, _ in chunk)
                )
                chunk = [
                    (key, value, [*headers, header])
                    for (key, _, headers), (value, header) in zip(chunk, sealed, strict=True)
                ]
            for key, value, headers in chunk:
                pending.append(await producer.send(topic, value, key=key, headers=headers))
                size += len(value)
            count += len(chunk)
            if len(pending) >= 20_000:  # bound memory; acks arrive in batches anyway
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        if keyring is not None:
            await keyring.stop()
    return count, size


def fill_topic(
    settings: Settings,
    events: int,
    *,
    seed: int = 7,
    seal: bool = True,
    regroup_every: int = Workload.regroup_every,
) -> dict[str, Any]:
    """Create the topic and write `events` workload events into it (customers = events/4.5),
    sealed as ingest writes them unless `seal` is false (a log from before encryption), a
    package regrouped after every `regroup_every` customers (0: never).

    Generation and encoding run in a child process while this one produces, so the fill
    takes about as long as the slower of the two.
    """
    from entitled.topics import ensure_event_topic

    assert settings.kafka_bootstrap_servers
    asyncio.run(ensure_event_topic(settings))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue(maxsize=64)
    # ~4.5 events per customer: ask for a few more customers and stop at exactly `events`.
    customers = max(1, round(events / 4.5 * 1.03))
    args = (customers, events, seed, regroup_every, queue)
    gen = ctx.Process(target=_generate, args=args, daemon=True)
    started = time.perf_counter()
    gen.start()
    try:
        count, size = asyncio.run(_produce(settings, queue, seal))
    finally:
        gen.join(timeout=30)
    seconds = time.perf_counter() - started
    return {
        "events": count,
        "customers": customers,
        "bytes": size,
        "mean_event_bytes": round(size / max(count, 1)),
        "seconds": round(seconds, 2),
        "events_per_s": round(count / seconds),
    }


async def end_offsets(settings: Settings) -> dict[int, int]:
    from entitled.topics import end_offsets as ends

    return await ends(settings)


# -- child processes ---------------------------------------------------------------------


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment an `entitled` command needs to use the bench's services."""
    env = settings.child_env(os.environ)
    env.update(extra)
    return env


def spawn(
    settings: Settings, *args: str, log: Path, tree: Path | None = None, **extra: str
) -> subprocess.Popen[bytes]:
    """`entitled <args>` in its own session, output to `log`; with `tree`, that checkout's
    (its own .venv and code: a git worktree of main, say)."""
    command = ENTITLED if tree is None else [str(tree / ".venv/bin/python"), "-m", "launcher.cli"]
    if tree is not None:
        extra = {"PYTHONPATH": str(tree), **extra}
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, *args],
            cwd=tree,
            env=environment(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_http(
    url: str,
    proc: subprocess.Popen[Any] | None,
    what: str,
    timeout: float = 60,
    auth: tuple[str, str] | None = None,
) -> None:
    """Poll `url` until it answers 200; fail when `proc` exits first or after `timeout` s."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, auth=auth).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer in time")
        time.sleep(0.1)


# -- figures -----------------------------------------------------------------------------


def percentiles(seconds: list[float], digits: int = 1) -> dict[str, float]:
    if len(seconds) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "p50_ms": round(q[49] * 1000, digits),
        "p99_ms": round(q[98] * 1000, digits),
        "max_ms": round(max(seconds) * 1000, digits),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(name: str, report: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **report}
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def postmaster_pid(database_url: str) -> int | None:
    """The server's postmaster pid, when it runs on this machine and we may read it."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return None
    try:
        return int((Path(row[0]) / "postmaster.pid").read_text().split()[0]) if row else None
    except (OSError, ValueError):
        return None


def cpu_with_children(pid: int | None) -> float:
    """utime+stime+cutime+cstime of `pid`: the postmaster reaps every backend, so this
    grows by each finished backend's CPU (the benches close their connections)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """utime+stime of a live process (a Postgres backend), in seconds; 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def new_subscribers(n: int, tag: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """`n` (customer, `customer.subscription.created` event), each a new customer
    (`cus_<prefix><tag><i>`) subscribing to the `action` package of the workload."""
    from launcher.stripe import events as se

    now = int(time.time())
    out = []
    for i in range(n):
        cus = f"cus_{prefix}{tag}{i:06d}"
        sub = se.subscription(
            f"sub_{prefix}{tag}{i:06d}",
            customer=cus,
            items=[("price_action", "prod_action")],
            status="active",
            created=now,
        )
        out.append((cus, se.event("customer.subscription.created", sub, created=now)))
    return out
