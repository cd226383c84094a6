"""No secret in logs or error bodies of real processes: the webhook secret (ingest at
debug level, fed wrong signatures), the read and admin tokens (api at debug level, fed wrong
tokens), all three read from `_FILE` twins as mounted secrets are, and the Stripe API key
(backfill against a Stripe that refuses it, and one that is down); stripe-python's request
log stays quiet. A secret given twice (value and file) is refused without showing either.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import ENTITLED, Procs
from tests.support.system import ready

WEBHOOK_SECRET = "whsec_test_secret"
API_TOKEN = "tok_never_show_me_4c1d"
API_KEY = "sk_test_never_show_me_77aa"
ADMIN_TOKEN = "tok_admin_never_show_me_e5f6"


@pytest.fixture
def stripe_that_refuses() -> Iterator[str]:
    """A fake Stripe API answering 401 to everything, as Stripe does for a bad key."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def test_no_secret_in_logs_or_bodies_of_real_processes(
    settings: Settings, procs: Procs, stripe_that_refuses: str, tmp_path: Path
) -> None:
    migrate = procs.spawn("migrate")
    assert migrate.popen is not None and migrate.popen.wait(120) == 0, migrate.tail()
    ingest_port, api_port = free_port(), free_port()
    ingest = procs.spawn(
        "ingest",
        "--port",
        str(ingest_port),
        "--log-level",
        "debug",
        STRIPE_WEBHOOK_SECRET="",  # from the file only
        STRIPE_WEBHOOK_SECRET_FILE=_secret_file(tmp_path, "whsec", WEBHOOK_SECRET),
    )
    api = procs.spawn(
        "api",
        "--port",
        str(api_port),
        "--log-level",
        "debug",
        ENTITLED_API_TOKEN_FILE=_secret_file(tmp_path, "read", API_TOKEN),
        ENTITLED_ADMIN_TOKEN_FILE=_secret_file(tmp_path, "admin", ADMIN_TOKEN),
    )
    ingest_url, api_url = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{api_port}"
    for url in (ingest_url, api_url):
        wait_until(lambda u=url: ready(u), 90, f"{url} ready", procs)

    bodies: list[str] = []
    body = se.encode(se.event("customer.created", se.customer("cus_secret")))
    with httpx.Client(timeout=30) as client:
        for header in (
            se.sign_header(body, "whsec_wrong"),
            se.sign_header(body, WEBHOOK_SECRET, timestamp=1),  # right secret, too old
            f"t=1,v1={WEBHOOK_SECRET}",  # the secret itself as a signature
            WEBHOOK_SECRET,
        ):
            r = client.post(
                f"{ingest_url}/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
            )
            assert r.status_code == 400
            bodies.append(r.text)
        for auth in ("", "Bearer wrong", f"Bearer {API_TOKEN}x", f"Basic {API_TOKEN}"):
            r = client.get(
                f"{api_url}/v1/search",
                params={"customer": "cus_secret", "q": "x"},
                headers={"Authorization": auth},
            )
            assert r.status_code == 401
            bodies.append(r.text)
        ok = client.get(
            f"{api_url}/v1/search",
            params={"customer": "cus_secret", "q": "x"},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert ok.status_code == 200  # the token works: the 401s above were about the token
        for auth, status in (
            (f"Bearer {API_TOKEN}", 403),  # the read token on an admin route
            (f"Bearer {ADMIN_TOKEN}x", 401),
            (f"Bearer {ADMIN_TOKEN}", 200),
        ):
            r = client.get(f"{api_url}/v1/customers", headers={"Authorization": auth})
            assert r.status_code == status, (auth, r.text)
            bodies.append(r.text)
        signed = client.post(
            f"{ingest_url}/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": se.sign_header(body, WEBHOOK_SECRET)},
        )
        assert signed.status_code == 200, signed.text  # the secret from the file verifies

    outputs = []
    for base in (stripe_that_refuses, f"http://127.0.0.1:{free_port()}"):  # refuses; down
        backfill = procs.spawn(
            "backfill",
            "--lists",
            "customers",
            name="backfill",
            STRIPE_API_KEY=API_KEY,
            STRIPE_API_BASE=base,
            # two retries reach the connection error's message; eight only wait longer
            ENTITLED_STRIPE_RETRIES="2",
        )
        assert backfill.popen is not None
        assert backfill.popen.wait(120) != 0, backfill.tail()  # it failed, and said why
        outputs.append(backfill.log.read_text(errors="replace"))

    ingest.stop()
    api.stop()
    logs = {
        "ingest": ingest.log.read_text(errors="replace"),
        "api": api.log.read_text(errors="replace"),
    }
    for secret in (WEBHOOK_SECRET, API_TOKEN, ADMIN_TOKEN, API_KEY):
        assert not [b for b in bodies if secret in b], secret
        assert not [name for name, text in logs.items() if secret in text], secret
        assert not [o for o in outputs if secret in o], (secret, outputs)
    assert "400 Bad Request" in logs["ingest"]  # the log did see the failures
    assert "401 Unauthorized" in logs["api"]
    # stripe-python's own request log ("Request to Stripe api ...") is quiet at debug too
    assert not [o for o in outputs if "Request to Stripe api" in o], outputs
    # a key's last four characters are what Stripe itself shows; nothing longer
    assert not [o for o in outputs if API_KEY[:-4] in o]


def test_a_secret_and_its_file_both_set_is_refused_without_showing_either(
    tmp_path: Path,
) -> None:
    """Exit 2 (a usage error) naming both variables; neither the value nor the file's
    contents reach the output."""
    path = tmp_path / "token"
    path.write_text(API_TOKEN + "-from-file\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLED_", "STRIPE_"))}
    env.update(
        DATABASE_URL="postgresql://127.0.0.1:1/none",
        ENTITLED_API_TOKEN=API_TOKEN,
        ENTITLED_API_TOKEN_FILE=str(path),
    )
    out = subprocess.run(
        [*ENTITLED, "api", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "ENTITLED_API_TOKEN and ENTITLED_API_TOKEN_FILE are both set" in out.stderr
    assert API_TOKEN not in out.stdout + out.stderr
