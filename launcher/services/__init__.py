"""The local Kafka and PostgreSQL that `entitled dev` and the tests run against.

Both are started by the project itself on 127.0.0.1 (free ports, remembered in
`services_dir/state.json`), detached from the starting process and stopped by pid.
`up(secure=True)` starts them as production runs them: Kafka with SASL_SSL only (SCRAM users,
a certificate from a local CA) and PostgreSQL with TLS (`sslmode=verify-full` URLs).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from entitled.settings import Settings
from launcher.services import _process as proc
from launcher.services import kafka, postgres, replicas
from launcher.services.errors import ServicesError

__all__ = [
    "Endpoints",
    "ServicesError",
    "down",
    "endpoints",
    "prepare",
    "replica_urls",
    "resolve",
    "start_kafka",
    "start_postgres",
    "start_replica",
    "status",
    "stop_kafka",
    "stop_postgres",
    "stop_replica",
    "up",
    "up_postgres",
    "up_replicas",
    "with_kafka",
]


@dataclass(frozen=True)
class Endpoints:
    """Where the services answer."""

    bootstrap: str  # "127.0.0.1:PORT[,...]"
    database_url: str  # "postgresql://postgres@127.0.0.1:PORT/entitled[?sslmode=...]"
    # KAFKA_* variables a process needs for this Kafka (security settings, and the bootstrap)
    kafka_env: dict[str, str] = field(default_factory=dict, compare=False)

    def kafka_settings(self, settings: Settings) -> Settings:
        """`settings` pointed at this Kafka, with its security settings."""
        local = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, **self.kafka_env})
        return with_kafka(settings, local)


def with_kafka(settings: Settings, source: Settings) -> Settings:
    """`settings` with the Kafka address and security settings of `source`."""
    return replace(
        settings,
        kafka_bootstrap_servers=source.kafka_bootstrap_servers,
        kafka_security_protocol=source.kafka_security_protocol,
        kafka_sasl_mechanism=source.kafka_sasl_mechanism,
        kafka_sasl_username=source.kafka_sasl_username,
        kafka_sasl_password=source.kafka_sasl_password,
        kafka_ssl_ca_file=source.kafka_ssl_ca_file,
        kafka_ssl_cert_file=source.kafka_ssl_cert_file,
        kafka_ssl_key_file=source.kafka_ssl_key_file,
    )


def _lock(settings: Settings) -> Any:
    return proc.locked(settings.services_dir / ".lock")


def _tls_dir(settings: Settings) -> Path:
    return settings.services_dir.absolute() / "tls"


def _check_secure(settings: Settings, name: str, current: dict[str, Any], secure: bool) -> None:
    was = bool(current.get("security") or current.get("tls_dir"))
    if was != secure:
        raise ServicesError(
            f"The local {name} in {settings.services_dir} was created "
            f"{'with' if was else 'without'} --secure. Run `entitled services down --wipe` "
            "first to recreate it."
        )


def _kafka_state(
    settings: Settings, state: proc.State, brokers: int, secure: bool | None = None
) -> dict[str, Any]:
    """The recorded cluster, or a new plan. `secure` None: whichever exists (new: plain)."""
    current = state.get("kafka")
    if current is None:
        current = kafka.plan(settings, brokers, secure=bool(secure))
    elif secure is not None:
        _check_secure(settings, "Kafka", current, secure)
    if len(current["nodes"]) != brokers:
        raise ServicesError(
            f"The local Kafka in {settings.services_dir} was created with "
            f"{len(current['nodes'])} broker(s), not {brokers}. Run "
            "`entitled services down --wipe` first to recreate it."
        )
    state["kafka"] = current
    return current


def _postgres_state(
    settings: Settings, state: proc.State, fast: bool, secure: bool | None = None
) -> dict[str, Any]:
    current = state.get("postgres") or postgres.plan(
        settings, fast=fast, tls_dir=_tls_dir(settings) if secure else None
    )
    if secure is not None:
        _check_secure(settings, "PostgreSQL", current, secure)
    if not postgres.running(current):
        current["fast"] = fast  # durability settings apply from this start on
    state["postgres"] = current
    return current


def _up(
    settings: Settings,
    *,
    brokers: int,
    fast: bool,
    want_kafka: bool,
    want_pg: bool,
    secure: bool | None = None,
) -> None:
    with _lock(settings):
        state = proc.load_state(settings.services_dir)
        try:
            if want_kafka:
                # Spawn the JVM first: PostgreSQL starts while Kafka boots.
                kafka.launch(settings, _kafka_state(settings, state, brokers, secure))
            if want_pg:
                postgres.start(settings, _postgres_state(settings, state, fast, secure))
            if want_kafka:
                kafka.wait_ready(state["kafka"])
        finally:
            proc.save_state(settings.services_dir, state)


def up(
    settings: Settings,
    *,
    brokers: int = 1,
    fast: bool = False,
    replicas: int = 0,
    secure: bool = False,
) -> Endpoints:
    """Start the local Kafka (`brokers` KRaft nodes) and PostgreSQL, and `replicas` streaming
    replicas of it; idempotent.

    `fast` turns off fsync and friends: for throw-away test clusters only. `secure`: Kafka
    over SASL_SSL only and PostgreSQL over TLS (see the module doc); a cluster is created
    secure or not, and stays so until wiped.
    """
    _up(settings, brokers=brokers, fast=fast, want_kafka=True, want_pg=True, secure=secure)
    if replicas:
        up_replicas(settings, replicas)
    return _endpoints(proc.load_state(settings.services_dir))


def _endpoints(state: proc.State) -> Endpoints:
    return Endpoints(
        kafka.bootstrap(state["kafka"]),
        postgres.url(state["postgres"]),
        kafka.client_env(state["kafka"]),
    )


def up_postgres(settings: Settings, *, fast: bool = False) -> str:
    """Start the local PostgreSQL alone (idempotent); its database URL. The tests of the
    database tier need no Kafka, and a JVM's start is most of the services' start."""
    _up(settings, brokers=1, fast=fast, want_kafka=False, want_pg=True)
    return postgres.url(proc.load_state(settings.services_dir)["postgres"])


def up_replicas(settings: Settings, count: int) -> tuple[str, ...]:
    """Replicas 1..`count` of the local PostgreSQL running (the ones already there are
    reused); their database URLs, for `ENTITLED_READ_DATABASE_URL`."""
    with _lock(settings):
        state = proc.load_state(settings.services_dir)
        if "postgres" not in state or not postgres.running(state["postgres"]):
            raise ServicesError(
                "Replicas copy the local PostgreSQL, which is not running: "
                "run `entitled services up` first."
            )
        current = state.get("postgres_replicas", [])
        try:
            state["postgres_replicas"] = replicas.ensure(
                settings.services_dir, state["postgres"], current, count
            )
        finally:
            if "postgres_replicas" not in state:
                state["postgres_replicas"] = current
            proc.save_state(settings.services_dir, state)
        return tuple(replicas.url(r) for r in state["postgres_replicas"][:count])


def replica_urls(settings: Settings) -> tuple[str, ...]:
    """The database URLs of the recorded replicas (running or not)."""
    state = proc.load_state(settings.services_dir)
    return tuple(replicas.url(r) for r in state.get("postgres_replicas", []))


def down(settings: Settings, *, wipe: bool = False) -> None:
    """Stop both services by pid; with `wipe`, delete their data, logs and state too."""
    with _lock(settings):
        state = proc.load_state(settings.services_dir)
        try:
            if "kafka" in state:
                kafka.stop(state["kafka"], kill=wipe)
            for replica in state.get("postgres_replicas", []):
                replicas.stop(replica, kill=wipe)
            if "postgres" in state:
                postgres.stop(state["postgres"], kill=wipe)
        finally:
            if not wipe and state:
                proc.save_state(settings.services_dir, state)
        if wipe:
            shutil.rmtree(settings.services_dir, ignore_errors=True)


def status(settings: Settings) -> dict[str, Any]:
    """Ports, pids, data directories, log files and health of the local services."""
    state = proc.load_state(settings.services_dir)
    result: dict[str, Any] = {
        "services_dir": str(settings.services_dir),
        "jar_cache": str(kafka.jar_dir(settings)),
        "jars_ready": kafka.jars_ready(settings),
        "kafka": None,
        "postgres": None,
        "replicas": replicas.health(state.get("postgres"), state.get("postgres_replicas", [])),
    }
    if "kafka" in state:
        nodes = kafka.health(state["kafka"])
        result["kafka"] = {
            "bootstrap": kafka.bootstrap(state["kafka"]),
            "cluster_id": state["kafka"]["cluster_id"],
            "protocol": kafka.client_env(state["kafka"])["KAFKA_SECURITY_PROTOCOL"],
            "nodes": nodes,
            "healthy": bool(nodes) and all(n["healthy"] for n in nodes),
        }
    if "postgres" in state:
        result["postgres"] = postgres.health(state["postgres"])
    return result


def prepare(settings: Settings) -> None:
    """Resolve the Kafka jars into the cache and check the PostgreSQL binaries."""
    kafka.prepare(settings)
    postgres.bin_dir()


def endpoints(settings: Settings) -> Endpoints:
    """The configured services; whatever is not configured is started locally."""
    resolved = resolve(settings, need_kafka=True, need_postgres=True)
    assert resolved.kafka_bootstrap_servers and resolved.database_url
    return Endpoints(resolved.kafka_bootstrap_servers, resolved.database_url, resolved.kafka_env())


def resolve(settings: Settings, *, need_kafka: bool, need_postgres: bool) -> Settings:
    """`settings` with the addresses of the services asked for filled in: the configured
    ones as they are, the others started locally (idempotent)."""
    want_kafka = need_kafka and not settings.kafka_bootstrap_servers
    want_pg = need_postgres and not settings.database_url
    if not (want_kafka or want_pg):
        return settings
    _up(
        settings,
        brokers=settings.replication_factor if settings.replication_factor > 1 else 1,
        fast=False,
        want_kafka=want_kafka,
        want_pg=want_pg,
    )
    state = proc.load_state(settings.services_dir)
    if want_kafka:
        settings = with_kafka(settings, kafka.client_settings(state["kafka"]))
    return replace(
        settings,
        database_url=settings.database_url
        or (postgres.url(state["postgres"]) if want_pg else None),
    )


def _on_existing(settings: Settings, name: str, action: Callable[[dict[str, Any]], object]) -> None:
    """Run `action` on the recorded state of service `name` under the lock; save the state
    (pids) whatever happens."""
    with _lock(settings):
        state = proc.load_state(settings.services_dir)
        try:
            if name not in state:
                raise ServicesError(
                    f"No local {name} in {settings.services_dir}; run `entitled services up` first."
                )
            action(state[name])
        finally:
            proc.save_state(settings.services_dir, state)


def stop_kafka(settings: Settings, *, kill: bool = False) -> None:
    """Stop the local Kafka (for fault tests); `start_kafka` brings it back on the same ports."""
    _on_existing(settings, "kafka", lambda state: kafka.stop(state, kill=kill))


def start_kafka(settings: Settings) -> None:
    """Start the local Kafka again on its remembered ports and wait until it answers."""
    _on_existing(settings, "kafka", lambda state: kafka.start(settings, state))


def stop_postgres(settings: Settings, *, kill: bool = False) -> None:
    """Stop the local PostgreSQL (for fault tests); `start_postgres` restarts it."""
    _on_existing(settings, "postgres", lambda state: postgres.stop(state, kill=kill))


def start_postgres(settings: Settings) -> None:
    """Start the local PostgreSQL again on its remembered port."""
    _on_existing(settings, "postgres", lambda state: postgres.start(settings, state))


def _replica(state: dict[str, Any], index: int) -> dict[str, Any]:
    for replica in state.get("postgres_replicas", []):
        if replica["index"] == index:
            return replica  # type: ignore[no-any-return]
    raise ServicesError(f"No replica {index}; run `entitled services up --replicas {index}`.")


def stop_replica(settings: Settings, index: int, *, kill: bool = False) -> None:
    """Stop replica `index` (for fault tests); `start_replica` restarts it."""

    def stop(state: dict[str, Any]) -> None:
        replicas.stop(_replica(state, index), kill=kill)

    _on_state(settings, stop)


def start_replica(settings: Settings, index: int) -> None:
    """Start replica `index` again on its remembered port; it resumes streaming."""

    def start(state: dict[str, Any]) -> None:
        replicas.start(state["postgres"], _replica(state, index))

    _on_state(settings, start)


def _on_state(settings: Settings, action: Callable[[dict[str, Any]], object]) -> None:
    with _lock(settings):
        state = proc.load_state(settings.services_dir)
        try:
            action(state)
        finally:
            proc.save_state(settings.services_dir, state)
