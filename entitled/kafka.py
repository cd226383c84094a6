"""How every Kafka client of the project connects: one place that turns `Settings` into
client options.

aiokafka clients (producer, consumers, admin) take `client_options(settings)`; the Faust
worker takes `faust_credentials(settings)`. `check(settings)` refuses a combination that
cannot work before anything connects, and `probe(settings)` makes one connection with a
deadline, so a wrong password or an untrusted certificate stops a process at start with
the setting to fix, instead of aiokafka's bootstrap retrying for ever.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from entitled.settings import Settings, SettingsError

__all__ = [
    "PROTOCOLS",
    "SASL_MECHANISMS",
    "KafkaAccessError",
    "KafkaConfigError",
    "check",
    "client_options",
    "faust_credentials",
    "probe",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PROBE_TIMEOUT_S = 10.0


class KafkaConfigError(SettingsError):
    """The Kafka security settings cannot work together; the message names the variable."""


class KafkaAccessError(Exception):
    """The broker refused us (credentials, certificates, protocol); names the variable."""


def _uses_ssl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _given(*settings: tuple[str, object]) -> list[str]:
    """The names of the settings that have a value."""
    return [name for name, value in settings if value]


def check(settings: Settings) -> None:
    """Raise `KafkaConfigError` for settings that contradict each other or are missing."""
    protocol = settings.kafka_security_protocol
    if protocol not in PROTOCOLS:
        raise KafkaConfigError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    sasl_set = _given(
        ("KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
        ("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
        ("KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
    )
    ssl_set = _given(
        ("KAFKA_SSL_CA_FILE", settings.kafka_ssl_ca_file),
        ("KAFKA_SSL_CERT_FILE", settings.kafka_ssl_cert_file),
        ("KAFKA_SSL_KEY_FILE", settings.kafka_ssl_key_file),
    )
    if _uses_sasl(settings):
        mechanism = settings.kafka_sasl_mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise KafkaConfigError(
                f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        for name, value in (
            ("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
            ("KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
        ):
            if not value:
                raise KafkaConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {name}")
    elif sasl_set:
        raise KafkaConfigError(
            f"{', '.join(sasl_set)} set but KAFKA_SECURITY_PROTOCOL={protocol}: "
            "use SASL_SSL (or SASL_PLAINTEXT) to send credentials"
        )
    if not _uses_ssl(settings) and ssl_set:
        raise KafkaConfigError(
            f"{', '.join(ssl_set)} set but KAFKA_SECURITY_PROTOCOL={protocol}: "
            "use SSL or SASL_SSL for TLS"
        )
    if bool(settings.kafka_ssl_cert_file) != bool(settings.kafka_ssl_key_file):
        raise KafkaConfigError(
            "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (a client certificate "
            "needs its key)"
        )
    for name, path in (
        ("KAFKA_SSL_CA_FILE", settings.kafka_ssl_ca_file),
        ("KAFKA_SSL_CERT_FILE", settings.kafka_ssl_cert_file),
        ("KAFKA_SSL_KEY_FILE", settings.kafka_ssl_key_file),
    ):
        if path and not path.is_file():
            raise KafkaConfigError(f"{name}={path}: no such file")


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS that verifies the broker against KAFKA_SSL_CA_FILE (the system CAs when unset,
    as managed services use public CAs), with the client certificate when one is given."""
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None,
            certfile=str(settings.kafka_ssl_cert_file) if settings.kafka_ssl_cert_file else None,
            keyfile=str(settings.kafka_ssl_key_file) if settings.kafka_ssl_key_file else None,
        )
        return context
    except ssl.SSLError as exc:
        name = "KAFKA_SSL_CERT_FILE/KAFKA_SSL_KEY_FILE" if settings.kafka_ssl_cert_file else ""
        name = name or "KAFKA_SSL_CA_FILE"
        raise KafkaConfigError(f"{name}: not a usable PEM file ({exc.reason or exc})") from None


def security_options(settings: Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments for the security settings (no bootstrap address)."""
    check(settings)
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if _uses_ssl(settings):
        options["ssl_context"] = _ssl_context(settings)
    if _uses_sasl(settings):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: the bootstrap servers and the security
    settings. `AIOKafkaProducer(**client_options(settings), acks="all")`."""
    if not settings.kafka_bootstrap_servers:
        raise KafkaConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **security_options(settings)}


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the settings: None for PLAINTEXT."""
    import faust  # the worker only: other processes do not pay for importing Faust

    check(settings)
    if _uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            # None: SASL_PLAINTEXT (faust picks SASL_SSL when a context is given)
            ssl_context=_ssl_context(settings) if _uses_ssl(settings) else None,
        )
    if _uses_ssl(settings):
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        hosts.append((host.strip("[]") or "localhost", int(port or 9092)))
    return hosts


def _refusal(settings: Settings, host: str, port: int, exc: BaseException) -> str | None:
    """What to tell the operator about `exc`, or None when it is not a refusal (the broker
    is down or unreachable: the process's own retries and health checks deal with that)."""
    where = f"Kafka at {host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = settings.kafka_ssl_ca_file or "the system CAs (KAFKA_SSL_CA_FILE unset)"
        return (
            f"{where}: the broker's certificate is not trusted by KAFKA_SSL_CA_FILE={ca}: "
            f"{exc.verify_message or exc}"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"{where}: TLS failed ({exc.reason or exc}); check KAFKA_SECURITY_PROTOCOL="
            f"{settings.kafka_security_protocol}, KAFKA_SSL_CA_FILE and KAFKA_SSL_CERT_FILE"
        )
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return f"{where}: KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}: {exc}"
    if isinstance(
        exc,
        kafka_errors.SaslAuthenticationFailed | kafka_errors.IllegalSaslStateError,
    ) or (isinstance(exc, ValueError) and "Server" in str(exc)):  # aiokafka's SCRAM check
        return (
            f"{where}: authentication failed for KAFKA_SASL_USERNAME="
            f"{settings.kafka_sasl_username!r}: check KAFKA_SASL_PASSWORD and "
            f"KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}"
        )
    if isinstance(exc, kafka_errors.KafkaConnectionError) and "closed" in str(exc):
        # TCP was accepted, then the broker hung up on the first request: it speaks another
        # protocol on that port (a plain client on a TLS listener).
        return (
            f"{where} closed the connection: KAFKA_SECURITY_PROTOCOL="
            f"{settings.kafka_security_protocol} does not match the broker's listener"
        )
    if isinstance(exc, kafka_errors.KafkaConnectionError | asyncio.TimeoutError):
        return None  # down, or too slow to tell
    if isinstance(exc, kafka_errors.KafkaError):
        return f"{where}: {type(exc).__name__}: {exc}; check the KAFKA_* security settings"
    return None


async def probe(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Connect to the first bootstrap server that answers, authenticate, and hang up.

    Raises `KafkaAccessError` naming the setting when the broker refuses the credentials or
    the certificate, within `timeout_s`. A broker that is merely unreachable is logged, not
    raised: processes start while Kafka is down and recover when it is back.
    """
    options = security_options(settings)
    if not settings.kafka_bootstrap_servers:
        raise KafkaConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
    deadline = asyncio.get_running_loop().time() + timeout_s
    unreachable = []
    for host, port in _hosts(settings.kafka_bootstrap_servers):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(left * 1000), **options), left
            )
        except Exception as exc:
            message = _refusal(settings, host, port, exc)
            if message is not None:
                raise KafkaAccessError(message) from None
            unreachable.append(f"{host}:{port} ({type(exc).__name__}: {exc})")
            continue
        conn.close()
        return
    if unreachable:
        log.warning("Kafka: no bootstrap server answered: %s", "; ".join(unreachable))
