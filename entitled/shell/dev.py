"""`entitled dev`: the whole system on this machine, with demo data, in one command.

Local Kafka and PostgreSQL (unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are given), the
topic and the schema, then `entitled ingest`, `entitled worker` and `entitled api` as child
processes; the demo catalogue (into an empty catalogue only) and a few signed demo events
sent through the real webhook endpoint. Ctrl-C (or SIGTERM) stops the children and the
services this run started; their data stays, so the next run resumes where this one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click
import httpx
import psycopg

from entitled.settings import Settings
from entitled.shell import demo
from entitled.shell import services as svc
from entitled.shell._children import Child, ChildDied, Children, Follower, echo
from entitled.shell.services._process import free_port, port_is_free
from entitled.topics import TopicError, ensure_event_topic

SECRET_FILE = "dev-webhook-secret"
PIDS_FILE = "dev.pids"
STOP_TIMEOUT_S = 20.0


class DevError(Exception):
    """`entitled dev` cannot go on; the message says why and what to do."""


def _say(message: str) -> None:
    echo(f"dev: {message}")


# -- configuration ---------------------------------------------------------------------------


def webhook_secrets(settings: Settings) -> tuple[str, ...]:
    """STRIPE_WEBHOOK_SECRET when set, else this home's own generated secret (kept on disk,
    so that a Stripe CLI or a script configured with it keeps working across restarts)."""
    if settings.webhook_secrets:
        return settings.webhook_secrets
    path = settings.home / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
        if stored:
            return (stored,)
    secret = "whsec_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return (secret,)


def _port(port: int, what: str, option: str) -> int:
    if port == 0:
        return free_port()
    if not port_is_free(port):
        raise DevError(
            f"port {port} on 127.0.0.1 (for the {what}) is taken by another process; find it "
            f"with `ss -ltnp 'sport = :{port}'`, or choose another with `{option} N` "
            f"(`{option} 0` picks a free one)"
        )
    return port


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment of the public interface, resolved, for `ingest`, `worker` and `api`."""
    assert settings.kafka_bootstrap_servers and settings.database_url
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url,
        ENTITLED_TOPIC=settings.topic,
        ENTITLED_PARTITIONS=str(settings.partitions),
        ENTITLED_HOME=str(settings.home),
        ENTITLED_CACHE=str(settings.cache),
        STRIPE_WEBHOOK_SECRET=",".join(settings.webhook_secrets),
        PYTHONUNBUFFERED="1",
    )
    if settings.api_token:
        env["ENTITLED_API_TOKEN"] = settings.api_token
    if settings.read_database_urls:
        env["ENTITLED_READ_DATABASE_URL"] = ",".join(settings.read_database_urls)
    return env


@contextlib.contextmanager
def _single_instance(home: Path) -> Iterator[None]:
    # Two `entitled dev` on one home would fight over ports, pids and services.
    home.mkdir(parents=True, exist_ok=True)
    with (home / "dev.lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevError(
                f"another `entitled dev` is running with ENTITLED_HOME={home} "
                f"(pids in {home / PIDS_FILE}); stop it first"
            ) from None
        yield


# -- steps -----------------------------------------------------------------------------------


def _running_services(settings: Settings) -> set[str]:
    report = svc.status(settings)
    running = set()
    if report["kafka"] and report["kafka"]["healthy"]:
        running.add("kafka")
    if report["postgres"] and report["postgres"]["healthy"]:
        running.add("postgres")
    return running


def _start_services(settings: Settings) -> Settings:
    if not (settings.kafka_bootstrap_servers and settings.database_url):
        _say(
            f"starting the local Kafka and PostgreSQL in {settings.services_dir} "
            "(the first run downloads the Kafka jars: a minute or two)"
        )
    ep = svc.endpoints(settings)
    _say(f"Kafka {ep.bootstrap}, PostgreSQL {ep.database_url}")
    return dataclasses.replace(
        settings, kafka_bootstrap_servers=ep.bootstrap, database_url=ep.database_url
    )


def _start_replicas(settings: Settings, count: int, local: bool) -> Settings:
    """`count` streaming replicas of the local PostgreSQL, for the read API."""
    if settings.read_database_urls:
        raise DevError("--replicas and ENTITLED_READ_DATABASE_URL exclude each other")
    if not local:
        raise DevError("--replicas copies the local PostgreSQL: unset DATABASE_URL")
    _say(f"starting {count} streaming replica(s) of the local PostgreSQL")
    urls = svc.up_replicas(settings, count)
    _say(f"the read API reads from {', '.join(urls)}")
    return dataclasses.replace(settings, read_database_urls=urls)


async def _prepare(settings: Settings) -> tuple[str, int]:
    """Topic (with the ingest's topic configs), schema, demo catalogue; all idempotent."""
    from projections import schema

    assert settings.kafka_bootstrap_servers and settings.database_url
    await ensure_event_topic(settings)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        active = await schema.migrate(conn)
        await conn.commit()
    return active, await demo.load_catalogue_if_empty(settings.database_url)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(
    urls: dict[str, str], children: Children, follower: Follower, timeout_s: float
) -> None:
    pending = dict(urls)
    deadline = time.monotonic() + timeout_s
    while pending:
        children.check()
        for name, url in list(pending.items()):
            if _ready(url):
                del pending[name]
        follower.pump()
        if pending and time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {c.name} ({c.log}) ---\n{c.tail()}" for c in children.all if c.name in pending
            )
            raise DevError(f"{', '.join(pending)} not ready after {timeout_s:.0f} s\n{tails}")
        time.sleep(0.1)


def _demo_folded(api_url: str, token: str | None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(
            f"{api_url}/v1/customers/cus_demo_alice/entitlements", headers=headers, timeout=2.0
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "action" in (r.json().get("groups") or [])


def _wait_folded(
    api_url: str, token: str | None, children: Children, follower: Follower, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _demo_folded(api_url, token):
        children.check()
        follower.pump()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _summary(settings: Settings, ingest_url: str, api_url: str, origin: str, stops: str) -> None:
    secret = settings.webhook_secrets[0]
    hostport = ingest_url.removeprefix("http://")
    lines = [
        f"  page       {api_url}/",
        f"  search     {api_url}/v1/search?customer=cus_demo_alice&q=harrison+ford",
        f"  webhook    {ingest_url}/webhooks/stripe",
        f"  secret     {secret}  ({origin})",
    ]
    if settings.api_token:
        lines.append("  api token  required: Authorization: Bearer $ENTITLED_API_TOKEN")
    lines += [
        f"  logs       {settings.home / 'logs'} (ingest.log, worker.log, api.log)",
        "  customers  " + ", ".join(demo.CUSTOMERS),
        "Forward your Stripe test-mode events with the Stripe CLI:",
        f"  stripe listen --forward-to {hostport}/webhooks/stripe",
        "  then restart with STRIPE_WEBHOOK_SECRET set to the whsec_... it prints",
        f"Ctrl-C stops {stops}.",
    ]
    echo("\n".join(lines))


def _supervise(children: Children, follower: Follower) -> None:
    while True:
        children.check()
        follower.pump()
        time.sleep(0.2)


# -- the command -----------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # One interrupt only: a second Ctrl-C must not break off the shutdown the first began.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _still_stopping)
    raise KeyboardInterrupt


def _still_stopping(signum: int, frame: FrameType | None) -> None:
    _say("still stopping, please wait")


@dataclasses.dataclass(frozen=True)
class Options:
    ingest_port: int
    api_port: int
    follow: bool
    keep_services: bool
    wipe: bool
    timeout_s: float
    replicas: int = 0


def run(settings: Settings, opts: Options) -> int:
    """Run until interrupted; 0 after Ctrl-C/SIGTERM, 1 when something failed."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    if opts.ingest_port and opts.ingest_port == opts.api_port:
        raise DevError("--ingest-port and --api-port must differ")
    ingest_port = _port(opts.ingest_port, "ingest", "--ingest-port")
    api_port = _port(opts.api_port, "api", "--api-port")
    if opts.wipe:
        svc.down(settings, wipe=True)
        _say(f"wiped the local services' data in {settings.services_dir}")
    wanted = set()
    if not settings.kafka_bootstrap_servers:
        wanted.add("kafka")
    if not settings.database_url:
        wanted.add("postgres")
    # Services that were up before this run (`entitled services up`) are left up at the end.
    ours = wanted - _running_services(settings) if wanted else set()
    origin = (
        "from STRIPE_WEBHOOK_SECRET"
        if settings.webhook_secrets
        else f"generated, kept in {settings.home / SECRET_FILE}"
    )
    settings = dataclasses.replace(settings, webhook_secrets=webhook_secrets(settings))
    children = Children()
    follower = Follower(opts.follow)
    pids = settings.home / PIDS_FILE
    code = 1
    try:
        settings = _start_services(settings)
        if opts.replicas:
            settings = _start_replicas(settings, opts.replicas, "postgres" in wanted)
        active, loaded = asyncio.run(_prepare(settings))
        _say(
            f"topic {settings.topic}; schema {active}; demo catalogue: "
            + (f"{loaded} movies loaded" if loaded else "kept (the catalogue has movies)")
        )
        env = child_environment(settings)
        logs = settings.home / "logs"
        _say(f"logs of the children in {logs}")
        _say(
            "hydrator: "
            + (
                f"reads the Stripe API at {settings.stripe_api_base or 'api.stripe.com'}"
                if settings.stripe_api_key
                else "idle, no STRIPE_API_KEY (events needing completion are counted)"
            )
        )
        for name, args in (
            ("ingest", ["ingest", "--port", str(ingest_port)]),
            ("worker", ["worker"]),
            ("relay", ["relay"]),
            # idle without STRIPE_API_KEY: it counts what it would fetch and says so
            ("hydrate", ["hydrate"]),
            ("api", ["api", "--port", str(api_port)]),
        ):
            child = Child(name, args, logs / f"{name}.log")
            follower.add(child)
            # In the home: Faust keeps its data directory in the working directory.
            children.start(child, env, settings.home)
        pids.write_text(json.dumps({"dev": os.getpid(), "children": children.pids()}) + "\n")
        ingest_url, api_url = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{api_port}"
        _wait_ready({"ingest": ingest_url, "api": api_url}, children, follower, opts.timeout_s)
        sent = demo.send(f"{ingest_url}/webhooks/stripe", settings.webhook_secrets[0])
        _say(f"sent {sent} demo events through the webhook endpoint")
        if not _wait_folded(api_url, settings.api_token, children, follower, opts.timeout_s):
            _say(f"the worker has not folded the demo events yet: see {logs / 'worker.log'}")
        _say(f"ready in {time.monotonic() - started:.1f} s")
        stops = "ingest, worker and api" + (
            "; the services stay up"
            if opts.keep_services or not ours
            else " and the local " + " and ".join(sorted(ours))
        )
        _summary(settings, ingest_url, api_url, origin, stops)
        _supervise(children, follower)
    except KeyboardInterrupt:
        echo()
        _say("stopping")
        code = 0
    except ChildDied as exc:
        _say(f"{exc}; the last lines of {exc.child.log}:\n{exc.child.tail()}")
    except (DevError, svc.ServicesError, TopicError, demo.DemoRefused) as exc:
        _say(str(exc))
    except httpx.HTTPError as exc:
        _say(f"sending the demo events failed: {exc!r}")
    except psycopg.OperationalError as exc:
        _say(f"cannot reach PostgreSQL: {exc}")
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _still_stopping)
        try:
            code = _shutdown(settings, children, ours, opts.keep_services, code)
        finally:
            pids.unlink(missing_ok=True)
    return code


def _shutdown(settings: Settings, children: Children, ours: set[str], keep: bool, code: int) -> int:
    try:
        children.stop(STOP_TIMEOUT_S)
        if children.all:
            _say("stopped ingest, worker and api")
    finally:  # whatever went wrong with the children, the services this run started stop
        if not keep and ours:
            code = _stop_services(settings, ours, code)
    return code


def _stop_services(settings: Settings, ours: set[str], code: int) -> int:
    report = svc.status(settings)  # a service that never got created has nothing to stop
    stop = {"kafka": svc.stop_kafka, "postgres": svc.stop_postgres}
    if "postgres" in ours:  # its replicas go with it (they are started by `--replicas` only)
        for replica in report["replicas"]:
            with contextlib.suppress(svc.ServicesError, OSError):
                svc.stop_replica(settings, replica["index"])
    for name in sorted(ours):
        if report[name] is None:
            continue
        try:
            stop[name](settings)
        except (svc.ServicesError, OSError) as exc:  # the other one is stopped all the same
            _say(f"stopping the local {name} failed: {exc}")
            code = 1
    _say(f"stopped the local {' and '.join(sorted(ours))} (data kept in {settings.services_dir})")
    return code


@click.command()
@click.option("--ingest-port", default=8000, show_default=True, help="Webhook port (0: any free).")
@click.option("--api-port", default=8001, show_default=True, help="Page/API port (0: any free).")
@click.option("--follow", is_flag=True, help="Also print the children's logs, prefixed.")
@click.option("--keep-services", is_flag=True, help="Leave Kafka and PostgreSQL running at exit.")
@click.option("--wipe", is_flag=True, help="Delete the local services' data before starting.")
@click.option(
    "--timeout", "timeout_s", default=120.0, show_default=True, help="Seconds to wait for startup."
)
@click.option(
    "--replicas",
    default=0,
    show_default=True,
    type=click.IntRange(0, 8),
    help="Streaming replicas of the local PostgreSQL that the read API reads from.",
)
def dev(
    ingest_port: int,
    api_port: int,
    follow: bool,
    keep_services: bool,
    wipe: bool,
    timeout_s: float,
    replicas: int,
) -> None:
    """Run ingest, worker and api locally with demo data, until Ctrl-C."""
    settings = Settings.from_env()
    opts = Options(ingest_port, api_port, follow, keep_services, wipe, timeout_s, replicas)
    try:
        with _single_instance(settings.home):
            code = run(settings, opts)
    except (DevError, svc.ServicesError) as exc:
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(code)
