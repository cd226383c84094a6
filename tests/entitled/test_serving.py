"""Idle HTTP connections of ingest and api (`entitled.serving`), on a real `entitled ingest`:
kept open past uvicorn's own 5 s by default (a load balancer's idle timeout, AWS ALB's 60 s,
must end them first, or a request it sends as the server closes is lost), and closed after
`ENTITLED_KEEP_ALIVE_S`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from entitled.settings import Settings
from tests.support.polling import http_ok, wait_until
from tests.support.ports import free_port
from tests.support.processes import Proc, environment

REQUEST = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@contextmanager
def _ingest(settings: Settings, tmp_path: Path, **env: str) -> Iterator[int]:
    port = free_port()
    proc = Proc(["ingest", "--port", str(port)], environment(settings, **env), tmp_path / "i.log")
    proc.start()
    try:

        def ready() -> bool:
            assert proc.alive, proc.tail()
            return http_ok(f"http://127.0.0.1:{port}/readyz")

        wait_until(ready, 60, "entitled ingest to be ready")
        yield port
    finally:
        proc.stop()


def _answered(sock: socket.socket) -> bool:
    """One request on this connection: True when a whole 200 came back, False when the
    server had closed it."""
    try:
        sock.sendall(REQUEST)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            head += chunk
    except (ConnectionResetError, BrokenPipeError):
        return False
    header, _, body = head.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in header.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return header.startswith(b"HTTP/1.1 200")


def test_an_idle_connection_outlives_uvicorns_default(settings: Settings, tmp_path: Path) -> None:
    with _ingest(settings, tmp_path) as port, socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        assert _answered(s)
        time.sleep(5.5)  # idle past uvicorn's default keep-alive (the condition under test)
        assert _answered(s), "the server closed an idle connection after uvicorn's 5 s"


def test_an_idle_connection_closes_after_the_setting(settings: Settings, tmp_path: Path) -> None:
    with (
        _ingest(settings, tmp_path, ENTITLED_KEEP_ALIVE_S="1") as port,
        socket.create_connection(("127.0.0.1", port)) as s,
    ):
        s.settimeout(10)
        assert _answered(s)
        idle_from = time.monotonic()
        assert s.recv(1) == b""  # the server closes it: end of stream, within the timeout
        assert 0.8 <= time.monotonic() - idle_from < 5
