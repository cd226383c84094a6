"""The steps of `entitled dev` before it supervises: the webhook secret, ports, the
children's environment, one instance per home, the local services (and replicas), topic,
schema and demo catalogue, and waiting for the children to be ready and the demo folded."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from launcher import demo
from launcher import services as svc
from launcher._children import Children, Follower, echo
from launcher.services._process import free_port, port_is_free

SECRET_FILE = "dev-webhook-secret"
PIDS_FILE = "dev.pids"


class DevError(Exception):
    """`entitled dev` cannot go on; the message says why and what to do."""


def say(message: str) -> None:
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


def port_for(port: int, what: str, option: str) -> int:
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
    env.pop("KAFKA_SASL_PASSWORD_FILE", None)  # set directly below
    env.update(settings.kafka_env())
    if settings.api_token:
        env["ENTITLED_API_TOKEN"] = settings.api_token
    if settings.read_database_urls:
        env["ENTITLED_READ_DATABASE_URL"] = ",".join(settings.read_database_urls)
    return env


@contextlib.contextmanager
def single_instance(home: Path) -> Iterator[None]:
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


def running_services(settings: Settings) -> set[str]:
    report = svc.status(settings)
    running = set()
    if report["kafka"] and report["kafka"]["healthy"]:
        running.add("kafka")
    if report["postgres"] and report["postgres"]["healthy"]:
        running.add("postgres")
    return running


def start_services(settings: Settings, *, secure: bool = False) -> Settings:
    if secure and (settings.kafka_bootstrap_servers or settings.database_url):
        raise DevError(
            "--secure starts a local Kafka and PostgreSQL over TLS: unset "
            "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (yours keep their own settings)"
        )
    if not (settings.kafka_bootstrap_servers and settings.database_url):
        say(
            f"starting the local Kafka and PostgreSQL in {settings.services_dir} "
            f"{'(SASL_SSL and TLS) ' if secure else ''}"
            "(the first run downloads the Kafka jars: a minute or two)"
        )
    ep = svc.up(settings, secure=True) if secure else svc.endpoints(settings)
    say(f"Kafka {ep.bootstrap}, PostgreSQL {ep.database_url}")
    if not settings.kafka_bootstrap_servers:
        settings = ep.kafka_settings(settings)
    return dataclasses.replace(settings, database_url=ep.database_url)


def start_replicas(settings: Settings, count: int, local: bool) -> Settings:
    """`count` streaming replicas of the local PostgreSQL, for the read API."""
    if settings.read_database_urls:
        raise DevError("--replicas and ENTITLED_READ_DATABASE_URL exclude each other")
    if not local:
        raise DevError("--replicas copies the local PostgreSQL: unset DATABASE_URL")
    say(f"starting {count} streaming replica(s) of the local PostgreSQL")
    urls = svc.up_replicas(settings, count)
    say(f"the read API reads from {', '.join(urls)}")
    return dataclasses.replace(settings, read_database_urls=urls)


async def prepare(settings: Settings) -> tuple[str, int]:
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


def wait_ready(
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


def wait_folded(
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
