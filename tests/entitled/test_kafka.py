"""The Kafka security settings as client options: pure units (the broker side is in
tests/launcher/services/test_secure.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from entitled.kafka import KafkaConfigError, check, client_options, faust_credentials
from entitled.settings import Settings, SettingsError
from launcher.services import tls


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tls.Authority:
    return tls.authority(tmp_path_factory.mktemp("ca"))


def _env(**values: str) -> Settings:
    return Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", **values})


def test_plaintext_is_the_default() -> None:
    assert client_options(_env()) == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(_env()) is None


def test_sasl_ssl_gives_aiokafka_and_faust_the_same(ca: tls.Authority, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    s = _env(
        KAFKA_SECURITY_PROTOCOL="sasl_ssl",
        KAFKA_SASL_MECHANISM="scram-sha-512",
        KAFKA_SASL_USERNAME="entitled",
        KAFKA_SASL_PASSWORD_FILE=str(password),
        KAFKA_SSL_CA_FILE=str(ca.ca_file),
    )
    options = client_options(s)
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert options == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "entitled",
        "sasl_plain_password": "s3cret",
    }
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password) == ("entitled", "s3cret")
    assert "s3cret" not in repr(s)


def test_ssl_with_a_client_certificate(ca: tls.Authority) -> None:
    s = _env(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CA_FILE=str(ca.ca_file),
        KAFKA_SSL_CERT_FILE=str(ca.cert_file),
        KAFKA_SSL_KEY_FILE=str(ca.key_file),
    )
    assert client_options(s)["security_protocol"] == "SSL"
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS'"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},
            "needs KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM='GSSAPI'",
        ),
        ({"KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME set but KAFKA_SECURITY_PROTOCOL"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
                "KAFKA_SSL_CA_FILE": "/x",
            },
            "KAFKA_SSL_CA_FILE set but",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/x"},
            "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CA_FILE=/nonexistent/ca.pem: no such file",
        ),
    ],
)
def test_contradictions_name_the_variable(values: dict[str, str], named: str) -> None:
    with pytest.raises(KafkaConfigError) as refused:
        check(_env(**values))
    assert named in str(refused.value)
    assert isinstance(refused.value, SettingsError)  # the CLI turns these into exit 2


def test_a_ca_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(KafkaConfigError, match="KAFKA_SSL_CA_FILE"):
        client_options(_env(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_FILE=str(junk)))
