"""Fixture `stripe_mock`: Stripe's own API mock (the real `stripe-mock` binary) on 127.0.0.1.

`scripts/bootstrap` (run by `make venv`) builds the pinned stripe-mock into the venv's
`bin/`, next to the interpreter running the tests. stripe-mock answers every documented
endpoint with objects of the current API shape, which is what the corpus test and hydrate
need. It is stateless, so one process serves the whole session.

Both listeners are bound to 127.0.0.1 with the port left to the kernel (no race between
choosing a port and binding it); the HTTP port is read back from the line stripe-mock
prints. HTTPS is bound too only because stripe-mock otherwise listens on `[::]:12112`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

API_KEY = "sk_test_123"
BINARY = Path(sys.executable).with_name("stripe-mock")
START_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"Listening for HTTP at address: (127\.0\.0\.1:\d+)")


def _http_address(log: Path) -> str | None:
    match = _LISTENING.search(log.read_text(errors="replace"))
    return match.group(1) if match else None


def _answers(base: str) -> bool:
    try:
        reply = httpx.get(f"{base}/v1/customers/cus_123", auth=(API_KEY, ""), timeout=2)
    except httpx.TransportError:
        return False
    return reply.status_code == 200


def start(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start stripe-mock writing to `log`; return the process and its base URL once it answers."""
    if not BINARY.exists():
        pytest.fail(
            f"stripe-mock is not installed at {BINARY}: run `make venv` "
            "(or `bash scripts/bootstrap .venv`), which builds it with `go install`",
            pytrace=False,
        )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BINARY), "-http-addr", "127.0.0.1:", "-https-addr", "127.0.0.1:"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    address = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"stripe-mock exited with {proc.returncode}: {log.read_text()}")
        address = address or _http_address(log)
        if address and _answers(f"http://{address}"):
            return proc, f"http://{address}"
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"stripe-mock did not answer in time: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def stripe_mock() -> Iterator[str]:
    """Base URL (`http://127.0.0.1:PORT`) of a running stripe-mock; any `sk_test_...` key."""
    with tempfile.TemporaryDirectory(prefix="stripe-mock-") as home:
        proc, base = start(Path(home) / "stripe-mock.log")
        try:
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
