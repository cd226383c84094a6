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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.polling import http_ok, wait_until

API_KEY = "sk_test_123"
BINARY = Path(sys.executable).with_name("stripe-mock")
START_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"Listening for HTTP at address: (127\.0\.0\.1:\d+)")


def _http_address(log: Path) -> str | None:
    match = _LISTENING.search(log.read_text(errors="replace"))
    return match.group(1) if match else None


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

    def base() -> str | None:
        if proc.poll() is not None:
            raise RuntimeError(f"stripe-mock exited with {proc.returncode}: {log.read_text()}")
        address = _http_address(log)
        ok = address and http_ok(f"http://{address}/v1/customers/cus_123", API_KEY)
        return f"http://{address}" if ok else None

    try:
        url = wait_until(base, START_TIMEOUT_S, "stripe-mock to answer")
    except AssertionError:
        proc.kill()
        proc.wait(10)
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"stripe-mock did not answer in time: {tail}") from None
    assert url is not None
    return proc, url


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
