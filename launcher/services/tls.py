"""A private certificate authority for the local services started with `--secure`.

`openssl` makes a CA and one server certificate for 127.0.0.1/localhost, used by the Kafka
SASL_SSL listener and PostgreSQL's `ssl=on`; clients trust the CA file (KAFKA_SSL_CA_FILE,
`sslrootcert=`). Made once per services directory, on the first secure start.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.services.errors import ServicesError

__all__ = ["Authority", "authority", "client_certificate", "password"]

_DAYS = "825"


@dataclass(frozen=True)
class Authority:
    """The files of a local CA and of the server certificate it signed."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key_file(self) -> Path:
        """PKCS#8, unencrypted: the form both Kafka's PEM key store and PostgreSQL read."""
        return self.directory / "server.key"

    @property
    def client_cert_file(self) -> Path:
        """A client certificate (CN=entitled) for mutual TLS (`client_certificate`)."""
        return self.directory / "client.crt"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client.key"

    @property
    def bundle(self) -> Path:
        """The key followed by the certificate: Kafka's `ssl.keystore.type=PEM` file."""
        return self.directory / "server.pem"


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise ServicesError(
            "`openssl` is not on PATH; `--secure` makes its certificates with it. "
            "Install it with `apt-get install openssl` (or `brew install openssl`)."
        )
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServicesError(f"openssl {args[0]} failed (exit {done.returncode}):\n{done.stderr}")


def authority(directory: Path, *, name: str = "entitled local CA") -> Authority:
    """The CA and server certificate in `directory`, made now if they are not there yet."""
    auth = Authority(directory)
    if auth.bundle.exists():
        return auth
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # the postgres user reads the certificate (not the keys)
    key = ("-newkey", "rsa:2048", "-nodes")
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", _DAYS,
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", _DAYS, "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    for secret in (auth.ca_key, auth.key_file):
        secret.chmod(0o600)
    partial = directory / "server.pem.partial"
    partial.write_bytes(auth.key_file.read_bytes() + auth.cert_file.read_bytes())
    partial.chmod(0o600)
    partial.rename(auth.bundle)  # last: its presence means the whole set is there
    return auth


def client_certificate(auth: Authority, *, name: str = "entitled") -> Authority:
    """A client certificate signed by `auth`'s CA (made once): what a process presents to a
    broker listener that requires mutual TLS (KAFKA_SSL_CERT_FILE / KAFKA_SSL_KEY_FILE)."""
    if auth.client_cert_file.exists():
        return auth
    directory = auth.directory
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    (directory / "client.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    auth.client_key_file.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.crt.partial", "-days", _DAYS, "-extfile", "client.ext",
        cwd=directory,
    )  # fmt: skip
    (directory / "client.crt.partial").rename(auth.client_cert_file)  # last: the set is there
    return auth


def password() -> str:
    """A fresh random password for a local SCRAM user."""
    return secrets.token_urlsafe(18)
