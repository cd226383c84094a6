"""One frozen `Settings`, built from the environment once per entry point and passed down.

Nothing below the entry points reads `os.environ`; tests build `Settings` explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_ENTITLING_STATUSES = ("active", "trialing", "past_due")
DEFAULT_GRANTS = ("metadata", "features", "summary")
# Host headers the read API answers by default: loopback names only (DNS rebinding).
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")

# Every variable that holds a secret; each one may instead name a file through `<NAME>_FILE`
# (a mounted Docker/Kubernetes secret). URLs are here because they carry passwords.
SECRET_VARIABLES = (
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_KEY",
    "ENTITLED_API_TOKEN",
    "ENTITLED_ADMIN_TOKEN",
    "ENTITLED_MASTER_KEY",
    "KAFKA_SASL_PASSWORD",
    "DATABASE_URL",
    "ENTITLED_READ_DATABASE_URL",
)


class SettingsError(ValueError):
    """A configuration the process cannot start with; the message names the variable and
    never holds a secret's value."""


def secret(env: Mapping[str, str], name: str) -> str | None:
    """The value of the secret variable `name`, given directly or as the contents of the file
    `<name>_FILE` names (surrounding whitespace, such as the file's last newline, dropped).
    None when neither is set; `SettingsError` when both are, or the file cannot be read."""
    direct = env.get(name) or None
    path = env.get(f"{name}_FILE") or None
    if path is None:
        return direct
    if direct is not None:
        raise SettingsError(f"{name} and {name}_FILE are both set: set only one of them")
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SettingsError(f"{name}_FILE: cannot read {path}: {reason}") from None
    if not text:
        raise SettingsError(f"{name}_FILE: {path} is empty")
    return text


def without_secret_files(env: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """`env` without the `_FILE` twins of `names`: for a child whose environment sets those
    variables directly (both set is an error)."""
    drop = {f"{name}_FILE" for name in names}
    return {k: v for k, v in env.items() if k not in drop}


def _grants(value: str | None) -> tuple[str, ...]:
    """ENTITLED_GRANTS: a comma-separated subset of DEFAULT_GRANTS (empty: all of them)."""
    chosen = _split(value)
    unknown = sorted(set(chosen) - set(DEFAULT_GRANTS))
    if unknown:
        raise SettingsError(f"ENTITLED_GRANTS: unknown source(s) {unknown}; use {DEFAULT_GRANTS}")
    return tuple(g for g in DEFAULT_GRANTS if g in chosen) or DEFAULT_GRANTS


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults docs/configuration.md lists."""

    kafka_bootstrap_servers: str | None = None  # None: the local service of `entitled services`
    # Kafka security, for every client (entitled/kafka.py checks and applies them)
    kafka_security_protocol: str = "PLAINTEXT"  # SSL, SASL_PLAINTEXT, SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_ca_file: Path | None = None  # None: the system CAs
    kafka_ssl_cert_file: Path | None = None  # a client certificate (mutual TLS)
    kafka_ssl_key_file: Path | None = None
    database_url: str | None = None  # None: the local service of `entitled services`
    # Streaming replicas the read API reads from (round robin); empty: reads on the primary
    read_database_urls: tuple[str, ...] = ()
    topic: str = "stripe.events"
    partitions: int = 8
    replication_factor: int = 1
    webhook_secrets: tuple[str, ...] = ()
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    api_token: str | None = None  # reads (search, entitlements, changes)
    admin_token: str | None = None  # catalogue writes, refresh, drift, customer list, forget
    # Host headers the read API answers (ENTITLED_ALLOWED_HOSTS; `*` for any)
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    # where every process's /metrics (and health) listens; 0.0.0.0 inside containers
    metrics_host: str = "127.0.0.1"
    # erasure: the master key(s) wrapping the data keys (comma-separated: the first wraps),
    # the compacted topic of the data keys, how many unwrapped keys stay in memory, how
    # often every process reads the keys topic (tombstones), and its segment time (bounds
    # how long a forgotten key stays on the broker's disks: docs/erasure.md)
    master_key: str | None = None
    keys_topic: str = ""  # empty: `data_keys_topic` names it after the event topic
    key_cache_size: int = 10_000
    keys_follow_s: float = 1.0
    keys_segment_s: float = 3600.0
    # A reader that meets a record whose data key is not in the keys topic yet waits for it
    # until the record is this old (Kafka timestamp): a writer sends a new key and the
    # first event sealed with it at once, and acknowledges that event only once both are
    # written, within its ENTITLED_PRODUCE_TIMEOUT. So this bounds that timeout plus the
    # clock skew between writers and readers (docs/erasure.md, "Key order").
    key_wait_s: float = 30.0
    home: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "entitled")
    cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "entitled")
    # ingest
    max_body_bytes: int = 1024 * 1024
    signature_tolerance_s: int = 300
    produce_timeout_s: float = 5.0
    # fold
    group_metadata_key: str = "subscription_group"
    movie_metadata_key: str = "movie_id"
    entitling_statuses: tuple[str, ...] = DEFAULT_ENTITLING_STATUSES
    # what grants access: a subset of metadata, features, summary (ENTITLED_GRANTS)
    grants: tuple[str, ...] = DEFAULT_GRANTS
    feature_group_prefix: str = "group:"  # a feature `group:action` grants the action group
    feature_movie_prefix: str = "movie:"  # a feature `movie:42` grants movie 42
    # how long Stripe's summary and our derivation may disagree before it is drift
    drift_grace_s: float = 300.0
    # the hydrator re-lists products' features this often (Stripe sends no webhook); 0: off
    features_every_s: float = 600.0
    batch_size: int = 500
    # at most this many subscribers of a product whose grants changed are recomputed in one
    # transaction; more are queued and recomputed in transactions of this size (0: no bound)
    regroup_chunk: int = 2000
    batch_within_s: float = 0.0
    consumer_group: str = "entitled-worker"
    # the worker's Kafka group instance id (static membership: docs/operations.md); unique
    # per running copy; empty: `<host name>-<n>`, the lowest n no running copy holds
    worker_id: str = ""
    rule_plugins: tuple[str, ...] = ()  # modules imported at start that register/override rules
    worker_metrics_port: int | None = None  # the worker's /metrics and /readyz; None: off
    changes_topic: str = "entitlements.changes"  # the relay publishes the change feed here
    # Kafka consumer groups (worker, hydrator): a SIGKILLed member's partitions move after
    # this long. 6 s is the lowest a stock broker accepts (group.min.session.timeout.ms);
    # 2 s gives failover within 3 s where the broker allows it (docs/operations.md).
    kafka_session_timeout_s: float = 6.0
    # SIGTERM: /readyz answers 503 for this long while requests are still served (so a load
    # balancer stops sending), then in-flight work gets up to drain_timeout_s to finish.
    drain_delay_s: float = 0.0
    drain_timeout_s: float = 8.0
    # ingest and api: how long an idle HTTP connection is kept open. Longer than the load
    # balancers' and clients' own idle timeouts (AWS ALB 60 s), so that they close it first:
    # a server closing a connection a client reuses at that moment loses the request
    # (uvicorn's default, 5 s, equals httpx's pool expiry).
    keep_alive_s: float = 75.0
    # backfill
    backfill_rps: float = 20.0
    # how often a Stripe read is retried after a 429, a 5xx or a connection error (with
    # Retry-After or an exponential backoff up to 30 s) before the caller gets the error
    stripe_retries: int = 8
    # replay: the largest share of the live version's entitled customers a new version may
    # take something away from before the swap is refused (without --force)
    replay_max_loss: float = 0.01
    # the read API's in-memory model: at most this many customers (LRU); 0: off
    read_model_customers: int = 250_000
    # the read API's worker processes on its one port (api.workers): one Python process
    # answers on one core at most
    api_workers: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the environment variables of the public interface; `overrides` win (CLI flags)."""
        e = os.environ if env is None else env
        base = cls()
        s = cls(
            kafka_bootstrap_servers=e.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            kafka_security_protocol=(e.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            kafka_sasl_mechanism=(e.get("KAFKA_SASL_MECHANISM") or "").upper() or None,
            kafka_sasl_username=e.get("KAFKA_SASL_USERNAME") or None,
            kafka_sasl_password=secret(e, "KAFKA_SASL_PASSWORD"),
            kafka_ssl_ca_file=_path(e.get("KAFKA_SSL_CA_FILE")),
            kafka_ssl_cert_file=_path(e.get("KAFKA_SSL_CERT_FILE")),
            kafka_ssl_key_file=_path(e.get("KAFKA_SSL_KEY_FILE")),
            database_url=secret(e, "DATABASE_URL"),
            read_database_urls=_split(secret(e, "ENTITLED_READ_DATABASE_URL")),
            topic=e.get("ENTITLED_TOPIC") or base.topic,
            partitions=int(e.get("ENTITLED_PARTITIONS") or base.partitions),
            replication_factor=int(e.get("ENTITLED_REPLICATION_FACTOR") or 1),
            webhook_secrets=_split(secret(e, "STRIPE_WEBHOOK_SECRET")),
            stripe_api_key=secret(e, "STRIPE_API_KEY"),
            stripe_api_base=e.get("STRIPE_API_BASE") or None,
            api_token=secret(e, "ENTITLED_API_TOKEN"),
            admin_token=secret(e, "ENTITLED_ADMIN_TOKEN"),
            allowed_hosts=_split(e.get("ENTITLED_ALLOWED_HOSTS")) or base.allowed_hosts,
            metrics_host=e.get("ENTITLED_METRICS_HOST") or base.metrics_host,
            master_key=secret(e, "ENTITLED_MASTER_KEY"),
            keys_topic=e.get("ENTITLED_KEYS_TOPIC") or base.keys_topic,
            key_cache_size=int(e.get("ENTITLED_KEY_CACHE") or base.key_cache_size),
            keys_segment_s=float(e.get("ENTITLED_KEYS_SEGMENT_S") or base.keys_segment_s),
            key_wait_s=float(e.get("ENTITLED_KEY_WAIT_S") or base.key_wait_s),
            home=Path(e["ENTITLED_HOME"]) if e.get("ENTITLED_HOME") else base.home,
            cache=Path(e["ENTITLED_CACHE"]) if e.get("ENTITLED_CACHE") else base.cache,
            max_body_bytes=int(e.get("ENTITLED_MAX_BODY_BYTES") or base.max_body_bytes),
            produce_timeout_s=float(e.get("ENTITLED_PRODUCE_TIMEOUT") or base.produce_timeout_s),
            group_metadata_key=e.get("ENTITLED_GROUP_KEY") or base.group_metadata_key,
            movie_metadata_key=e.get("ENTITLED_MOVIE_KEY") or base.movie_metadata_key,
            entitling_statuses=_split(e.get("ENTITLED_ENTITLING_STATUSES"))
            or base.entitling_statuses,
            grants=_grants(e.get("ENTITLED_GRANTS")),
            feature_group_prefix=e.get("ENTITLED_FEATURE_GROUP_PREFIX")
            or base.feature_group_prefix,
            feature_movie_prefix=e.get("ENTITLED_FEATURE_MOVIE_PREFIX")
            or base.feature_movie_prefix,
            drift_grace_s=float(e.get("ENTITLED_DRIFT_GRACE_S") or base.drift_grace_s),
            features_every_s=float(e.get("ENTITLED_FEATURES_EVERY_S") or base.features_every_s),
            batch_size=int(e.get("ENTITLED_BATCH_SIZE") or base.batch_size),
            batch_within_s=float(e.get("ENTITLED_BATCH_WITHIN_S") or base.batch_within_s),
            regroup_chunk=int(e.get("ENTITLED_REGROUP_CHUNK") or base.regroup_chunk),
            consumer_group=e.get("ENTITLED_CONSUMER_GROUP") or base.consumer_group,
            worker_id=e.get("ENTITLED_WORKER_ID") or "",
            rule_plugins=_split(e.get("ENTITLED_RULE_PLUGINS")),
            worker_metrics_port=int(e["ENTITLED_WORKER_METRICS_PORT"])
            if e.get("ENTITLED_WORKER_METRICS_PORT")
            else None,
            backfill_rps=float(e.get("ENTITLED_BACKFILL_RPS") or base.backfill_rps),
            stripe_retries=int(e.get("ENTITLED_STRIPE_RETRIES") or base.stripe_retries),
            changes_topic=e.get("ENTITLED_CHANGES_TOPIC") or base.changes_topic,
            kafka_session_timeout_s=float(
                e.get("ENTITLED_KAFKA_SESSION_TIMEOUT_S") or base.kafka_session_timeout_s
            ),
            drain_delay_s=float(e.get("ENTITLED_DRAIN_DELAY_S") or base.drain_delay_s),
            drain_timeout_s=float(e.get("ENTITLED_DRAIN_TIMEOUT_S") or base.drain_timeout_s),
            keep_alive_s=float(e.get("ENTITLED_KEEP_ALIVE_S") or base.keep_alive_s),
            replay_max_loss=float(e.get("ENTITLED_REPLAY_MAX_LOSS") or base.replay_max_loss),
            read_model_customers=int(
                e.get("ENTITLED_READ_MODEL_CUSTOMERS") or base.read_model_customers
            ),
            api_workers=int(e.get("ENTITLED_API_WORKERS") or base.api_workers),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(s, **clean) if clean else s  # type: ignore[arg-type]

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment of an `entitled` child process that is to use these settings'
        services, topic, home, consumer group and secrets: `base` without its own
        `ENTITLED_*` / `STRIPE_*` variables (they would win over these), plus those."""
        env = {k: v for k, v in base.items() if not k.startswith(("ENTITLED_", "STRIPE_"))}
        env = without_secret_files(env, ("DATABASE_URL", "KAFKA_SASL_PASSWORD"))
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap_servers or "",
            DATABASE_URL=self.database_url or "",
            ENTITLED_TOPIC=self.topic,
            ENTITLED_PARTITIONS=str(self.partitions),
            ENTITLED_HOME=str(self.home),
            ENTITLED_CONSUMER_GROUP=self.consumer_group,
            ENTITLED_KAFKA_SESSION_TIMEOUT_S=str(self.kafka_session_timeout_s),
            STRIPE_WEBHOOK_SECRET=",".join(self.webhook_secrets),
            ENTITLED_KEYS_TOPIC=self.data_keys_topic,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.kafka_env())
        if self.master_key:
            env["ENTITLED_MASTER_KEY"] = self.master_key
        return env

    def kafka_env(self) -> dict[str, str]:
        """The KAFKA_* security variables of these settings (the unset ones empty, so that a
        child does not inherit another broker's)."""
        return {
            "KAFKA_SECURITY_PROTOCOL": self.kafka_security_protocol,
            "KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism or "",
            "KAFKA_SASL_USERNAME": self.kafka_sasl_username or "",
            "KAFKA_SASL_PASSWORD": self.kafka_sasl_password or "",
            "KAFKA_SSL_CA_FILE": str(self.kafka_ssl_ca_file or ""),
            "KAFKA_SSL_CERT_FILE": str(self.kafka_ssl_cert_file or ""),
            "KAFKA_SSL_KEY_FILE": str(self.kafka_ssl_key_file or ""),
        }

    @property
    def kafka_heartbeat_s(self) -> float:
        """How often a group member heartbeats: many beats per session timeout, so that a
        survivor learns of a rebalance soon after the dead member's session ends (it learns
        at its next heartbeat: on average half of this after the session timeout). A beat
        is a few bytes to the group coordinator; 0.125 s with a 2 s session, 0.375 s with 6."""
        return min(0.5, self.kafka_session_timeout_s / 16)

    @property
    def data_keys_topic(self) -> str:
        """The compacted topic of the data keys (erasure): ENTITLED_KEYS_TOPIC, else
        `entitled.keys` beside the default event topic and `<topic>.keys` beside any other,
        so that systems sharing a cluster (and their master keys) keep their keys apart."""
        if self.keys_topic:
            return self.keys_topic
        return "entitled.keys" if self.topic == "stripe.events" else f"{self.topic}.keys"

    @property
    def services_dir(self) -> Path:
        """Data directories, logs and pid files of the local Kafka and Postgres."""
        return self.home / "services"
