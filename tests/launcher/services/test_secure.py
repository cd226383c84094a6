"""Every process against Kafka with SASL_SSL only and PostgreSQL with TLS, as managed
services run them (`entitled services up --secure`): one secure system for the module.

The broker has no PLAINTEXT listener, and every database URL asks for `sslmode=verify-full`
against the local CA, so a process that ignored a setting could not work at all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from entitled.kafka import client_options
from entitled.settings import Settings
from launcher import services as svc
from launcher.services import tls
from launcher.services._process import run_async
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements
from tests.support.keys import MASTER_KEY
from tests.support.polling import wait_until
from tests.support.processes import ENTITLED, Procs, environment
from tests.support.stripe_mock import API_KEY
from tests.support.system import start_system

# Its own secure Kafka, PostgreSQL (with a replica) and processes: the integration tier.
pytestmark = pytest.mark.integration

SECRET = "whsec_secure_test"


@dataclasses.dataclass(frozen=True)
class Secure:
    settings: Settings  # the secure services, a fresh topic and database
    replica_url: str
    other_ca: Path  # a CA that did not sign the services' certificates


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def secure() -> Iterator[Secure]:
    home = Path(tempfile.mkdtemp(prefix="ent-sec-"))
    home.chmod(home.stat().st_mode | stat.S_IXOTH)  # the postgres user must get through it
    base = Settings(home=home, cache=Settings().cache)
    try:
        endpoints = svc.up(base, secure=True, fast=True, replicas=1)
        (replica,) = svc.replica_urls(base)
        name = f"t_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        settings = dataclasses.replace(
            endpoints.kafka_settings(base),
            database_url=_with_database(endpoints.database_url, name),
            topic=f"secure.{uuid.uuid4().hex[:8]}",
            webhook_secrets=(SECRET,),
            master_key=MASTER_KEY,
        )
        other = tls.authority(home / "other-ca", name="not the services' CA")
        yield Secure(settings, _with_database(replica, name), other.ca_file)
    finally:
        try:
            svc.down(base, wipe=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _run(secure: Secure, *args: str, timeout: float = 120, **env: str) -> str:
    done = subprocess.run(
        [*ENTITLED, *args],
        env=environment(secure.settings, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"entitled {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_services_speak_only_tls(secure: Secure) -> None:
    s = secure.settings
    assert s.kafka_security_protocol == "SASL_SSL" and s.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert s.database_url and "sslmode=verify-full" in s.database_url
    for url in (s.database_url, secure.replica_url):
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)
        # the same server, verified against a CA that did not sign it: refused
        wrong = url.replace(str(s.kafka_ssl_ca_file), str(secure.other_ca))
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(wrong, connect_timeout=10).close()


def test_every_process_works_over_sasl_ssl_and_tls(
    secure: Secure, tmp_path: Path, stripe_mock: str
) -> None:
    """ingest -> worker -> api (reading from a TLS replica), relay, hydrate, backfill,
    reconcile, refresh, replay and status, each a real process on the secure services."""
    s = secure.settings
    stripe = {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_mock}
    procs = Procs(s, tmp_path)
    try:
        system = start_system(
            procs, catalog=False, ENTITLED_READ_DATABASE_URL=secure.replica_url, **stripe
        )
        procs.spawn("relay", **stripe)
        procs.spawn("hydrate", **stripe)
        for event in (
            se.event("product.created", se.product("prod_sec", groups="action"), created=100),
            se.event(
                "customer.subscription.created",
                se.subscription("sub_sec", customer="cus_sec", items=[("price_s", "prod_sec")]),
                created=101,
            ),
        ):
            r = system.post_event(event)
            assert r.status_code == 200, r.text
        want = {"cus_sec": (["action"], [])}
        wait_until(lambda: entitlements(s) == want, 90, "the webhook folded", procs)
        # the api answers from the replica, over verify-full TLS
        wait_until(lambda: _groups(system.api_url, "cus_sec") == ["action"], 60, "the api", procs)
        # the relay published the change to Kafka over SASL_SSL
        wait_until(lambda: "cus_sec" in _changes(s), 60, "the relayed change", procs)

        _run(secure, "backfill", "--lists", "products", "--rps", "200", **stripe)
        _run(secure, "reconcile", "--rps", "200", **stripe)
        _run(secure, "refresh", "cus_refreshed", **stripe)
        wait_until(lambda: caught_up(s), 90, "the worker to reach the log end", procs)
        _run(secure, "hydrate", "--pending", **stripe)
        _run(secure, "replay", "--yes")
        info = json.loads(_run(secure, "status", "--json"))
        assert info["lag"] == 0 and info["dead_letters"] == 0
        assert sum(p["end"] for p in info["partitions"]) > 2  # webhooks + what Stripe gave
    finally:
        procs.stop_all()
        print(procs.report())


def _groups(api: str, customer: str) -> list[str] | None:
    r = httpx.get(f"{api}/v1/customers/{customer}/entitlements", timeout=10)
    return r.json().get("groups") if r.status_code == 200 else None


def _changes(settings: Settings) -> set[str]:
    async def go() -> set[str]:
        consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(settings.changes_topic, p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            batch = await consumer.getmany(timeout_ms=2000)
            return {r.key.decode() for records in batch.values() for r in records if r.key}
        finally:
            await consumer.stop()

    return run_async(go)


@pytest.mark.parametrize(
    ("command", "broken", "named"),
    [
        ("ingest", {"KAFKA_SASL_PASSWORD": "not-the-password"}, "KAFKA_SASL_PASSWORD"),
        ("worker", {"KAFKA_SASL_PASSWORD": "not-the-password"}, "KAFKA_SASL_PASSWORD"),
        ("relay", {"KAFKA_SSL_CA_FILE": "<other>"}, "KAFKA_SSL_CA_FILE"),
        ("ingest", {"KAFKA_SSL_CA_FILE": "<other>"}, "KAFKA_SSL_CA_FILE"),
        ("worker", {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_refused_credentials_stop_a_process_at_once(
    secure: Secure, command: str, broken: dict[str, str], named: str
) -> None:
    """A wrong password, a CA that did not sign the broker, a plain client on the TLS
    listener: a non-zero exit within 15 s naming the setting, never a retry loop."""
    env = {k: str(secure.other_ca) if v == "<other>" else v for k, v in broken.items()}
    if env.get("KAFKA_SECURITY_PROTOCOL") == "PLAINTEXT":
        env.update(KAFKA_SASL_MECHANISM="", KAFKA_SASL_USERNAME="", KAFKA_SASL_PASSWORD="")
        env["KAFKA_SSL_CA_FILE"] = ""
    started = time.monotonic()
    done = subprocess.run(
        [*ENTITLED, command],
        env=environment(secure.settings, **env),
        capture_output=True,
        text=True,
        timeout=15,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert named in output, output
    assert "Traceback" not in output, output
    assert "not-the-password" not in output
    assert took < 15


def test_contradicting_settings_are_a_usage_error(secure: Secure) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL"}  # SASL credentials still set: contradictory
    done = subprocess.run(
        [*ENTITLED, "ingest"],
        env=environment(secure.settings, **env),
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "KAFKA_SASL_USERNAME" in done.stderr and "KAFKA_SECURITY_PROTOCOL=SSL" in done.stderr
