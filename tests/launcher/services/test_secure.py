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

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from psycopg import sql

from entitled.kafka import KafkaAccessError, client_options, probe
from entitled.settings import Settings
from entitled.topics import end_offsets, ensure_topic
from launcher import services as svc
from launcher.services import kafka, tls
from launcher.services._process import load_state, run_async
from launcher.stripe import events as se
from processors.membership import remove_member
from tests.launcher.test_dev import api_base, can_watch, dev_environment, post_signed, running
from tests.support.db import caught_up, entitlements
from tests.support.keys import MASTER_KEY
from tests.support.polling import get, wait_until
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
    base: Settings  # the home the services run in (`entitled dev --secure` reuses them)


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
        yield Secure(settings, _with_database(replica, name), other.ca_file, base)
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
        # without TLS: refused by the server itself (pg_hba.conf: hostssl only)
        plain = url.partition("?")[0] + "?sslmode=disable"
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(plain, connect_timeout=10).close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN", "mutual TLS"])
def test_each_way_of_logging_in_that_managed_kafkas_use_works(
    secure: Secure, mechanism: str
) -> None:
    """SCRAM-SHA-256 (MSK, Aiven) and PLAIN (Confluent Cloud) on the SASL_SSL listener, and
    client certificates on the listener that requires them (MSK, Aiven): a real admin,
    producer and consumer each, through the project's client options."""
    state = load_state(secure.base.services_dir)["kafka"]
    if mechanism == "mutual TLS":
        env = kafka.mtls_env(state)
    else:
        env = kafka.client_env(state, mechanism=mechanism)
    s = dataclasses.replace(
        svc.with_kafka(secure.settings, Settings.from_env(env)), topic=f"mech.{uuid.uuid4().hex}"
    )
    assert s.kafka_security_protocol == ("SSL" if mechanism == "mutual TLS" else "SASL_SSL")
    assert run_async(lambda: _round_trip(s)) == {0: 1}
    if mechanism == "mutual TLS":  # the same listener without a client certificate: refused
        anonymous = dataclasses.replace(s, kafka_ssl_cert_file=None, kafka_ssl_key_file=None)
        with pytest.raises(KafkaAccessError):
            run_async(lambda: probe(anonymous))


async def _round_trip(settings: Settings) -> dict[int, int]:
    await probe(settings)
    await ensure_topic(settings, settings.topic, 1)
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    return await end_offsets(settings, settings.topic)


def test_dev_secure_takes_a_webhook_and_answers_a_search(secure: Secure) -> None:
    """`entitled dev --secure` end to end, on this module's secure services (dev reuses the
    services running in its home and leaves them up): the demo events and a new webhook go
    through SASL_SSL Kafka and TLS Postgres to a search."""
    env = dev_environment(secure.base.home, secure.base.cache)
    with running(env, "--secure") as run:
        fields = run.wait_ready()
        api, secret = api_base(fields), fields["secret"]
        wait_until(
            lambda: can_watch(
                api, "cus_demo_alice", "harrison ford", "Air Force One", "subscription"
            ),
            60,
            "alice's action subscription (the demo events)",
            run,
        )
        sub = se.subscription(
            customer="cus_demo_carol", items=[("price_demo_animated", "prod_demo_animated")]
        )
        event = se.event("customer.subscription.created", sub)
        r = post_signed(fields["webhook"], event, secret)
        assert r.status_code == 200 and r.json()["id"] == event["id"], r.text
        wait_until(
            lambda: can_watch(api, "cus_demo_carol", "toy story", "Toy Story", "subscription"),
            60,
            "carol's new subscription folded",
            run,
        )
        # every connection dev's processes hold to its database is TLS (none could be
        # otherwise: pg_hba.conf refuses it)
        url = _with_database(secure.settings.database_url or "", "entitled")
        with psycopg.connect(url, connect_timeout=10) as conn:
            ssl = conn.execute(
                "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.datname = 'entitled' AND a.pid <> pg_backend_pid() GROUP BY s.ssl"
            ).fetchall()
        assert [flag for flag, _ in ssl] == [True], ssl
        assert run.interrupt() == 0, run.text()


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
        # a worker's removal of a dead copy (LeaveGroup v3) goes through too: the broker
        # answers for the member, which it does not know (25, UNKNOWN_MEMBER_ID)
        assert run_async(lambda: _remove_nobody(s)) == 25

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


async def _remove_nobody(settings: Settings) -> int:
    client = AIOKafkaClient(**client_options(settings))
    await client.bootstrap()
    try:
        return await remove_member(client, settings.consumer_group, "nobody", "nobody")
    finally:
        await client.close()


def _groups(api: str, customer: str) -> list[str] | None:
    r = get(f"{api}/v1/customers/{customer}/entitlements", timeout=10)
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
