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
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg

from entitled.crypto import new_master_key
from entitled.settings import Settings, without_secret_files
from entitled.topics import ensure_event_topic
from launcher import demo
from launcher import services as svc
from launcher._children import Children, Follower, echo
from launcher.services._process import free_port, port_is_free

SECRET_FILE = "dev-webhook-secret"
READ_TOKEN_FILE = "dev-api-token"
ADMIN_TOKEN_FILE = "dev-admin-token"
MASTER_KEY_FILE = "dev-master-key"
PIDS_FILE = "dev.pids"


class DevError(Exception):
    """`entitled dev` cannot go on; the message says why and what to do."""


def say(message: str) -> None:
    echo(f"dev: {message}")


# -- configuration ---------------------------------------------------------------------------


def _kept(path: Path, make: Callable[[], str]) -> str:
    """The secret stored at `path`, or a new one from `make`, stored there (mode 0600), so
    that a Stripe CLI, a script or a bookmarked page keeps working across restarts."""
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
        if stored:
            return stored
    secret = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def webhook_secrets(settings: Settings) -> tuple[str, ...]:
    """STRIPE_WEBHOOK_SECRET when set, else this home's own generated secret."""
    if settings.webhook_secrets:
        return settings.webhook_secrets
    return (_kept(settings.home / SECRET_FILE, lambda: "whsec_" + secrets.token_urlsafe(32)),)


@dataclasses.dataclass(frozen=True)
class Generated:
    """The secrets `entitled dev` made itself (None: given by the environment). Only these
    may be printed: a secret the operator gave is theirs, and stays out of the output."""

    webhook_secret: str | None
    api_token: str | None
    admin_token: str | None


def with_secrets(settings: Settings) -> tuple[Settings, Generated]:
    """`settings` with a webhook secret, a read token and an admin token: those of the
    environment, else this home's generated ones. The page gets only the read token."""
    generated = Generated(
        None if settings.webhook_secrets else webhook_secrets(settings)[0],
        None if settings.api_token else _kept(settings.home / READ_TOKEN_FILE, _token),
        None if settings.admin_token else _kept(settings.home / ADMIN_TOKEN_FILE, _token),
    )
    return (
        dataclasses.replace(
            settings,
            webhook_secrets=webhook_secrets(settings),
            api_token=settings.api_token or generated.api_token,
            admin_token=settings.admin_token or generated.admin_token,
        ),
        generated,
    )


def _token() -> str:
    return secrets.token_urlsafe(24)


def master_key(settings: Settings) -> str:
    """ENTITLED_MASTER_KEY when set, else this home's own generated one, kept beside the
    webhook secret: the data keys of the log it wraps must open again after a restart."""
    return settings.master_key or _kept(settings.home / MASTER_KEY_FILE, new_master_key)


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
    resolved = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "ENTITLED_TOPIC": settings.topic,
        "ENTITLED_PARTITIONS": str(settings.partitions),
        "ENTITLED_HOME": str(settings.home),
        "ENTITLED_CACHE": str(settings.cache),
        "STRIPE_WEBHOOK_SECRET": ",".join(settings.webhook_secrets),
        "ENTITLED_KEYS_TOPIC": settings.data_keys_topic,
        "PYTHONUNBUFFERED": "1",
    }
    optional = {
        "ENTITLED_API_TOKEN": settings.api_token,
        "ENTITLED_ADMIN_TOKEN": settings.admin_token,
        "STRIPE_API_KEY": settings.stripe_api_key,
        "ENTITLED_READ_DATABASE_URL": ",".join(settings.read_database_urls),
        "ENTITLED_MASTER_KEY": settings.master_key,
    }
    resolved.update({k: v for k, v in optional.items() if v})
    resolved.update(settings.kafka_env())  # empty ones too: no other broker's settings
    # These values are resolved (a `_FILE` twin already read): the twin must not come along,
    # both set is an error.
    env = without_secret_files(os.environ, resolved)
    env.update(resolved)
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
