"""Fixture `localstripe`: a real localstripe process on 127.0.0.1, fresh for each test.

`localstripe` itself binds `[::]` on a fixed port and pickles its store to the shared
`/tmp/localstripe.pickle` on every write; parallel test runs would clash on both. So the
process is started through a tiny launcher that binds 127.0.0.1 on a port the kernel
picks (no race between choosing and binding), reports it on stdout, and keeps the store
in memory only. The server itself is localstripe's unchanged aiohttp app.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

import pytest

from tests.support.polling import http_ok, wait_until

API_KEY = "sk_test_localstripe"

_LAUNCHER = """
import socket, sys
from aiohttp import web
from localstripe import resources
resources.Store.dump_to_disk = lambda self: None  # in memory: no shared /tmp pickle
from localstripe.server import app
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""


def _wait_ready(base: str, proc: subprocess.Popen[str], deadline_s: float = 30.0) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"localstripe exited with {proc.returncode}")
        return http_ok(f"{base}/v1/customers", API_KEY)

    try:
        wait_until(answers, deadline_s, "localstripe to answer")
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None


@pytest.fixture
def localstripe() -> Iterator[str]:
    """Base URL (`http://127.0.0.1:PORT`) of a fresh localstripe; use any `sk_test_...` key."""
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER], stdout=subprocess.PIPE, stderr=errors, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"localstripe launcher failed (exit {proc.poll()}): {_tail(errors)}")
        base = f"http://127.0.0.1:{line}"
        try:
            _wait_ready(base, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {_tail(errors)}") from exc
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        errors.close()


def _tail(errors: IO[str]) -> str:
    errors.seek(0)
    return errors.read()[-2000:]
