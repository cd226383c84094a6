"""The read API as a real `entitled api` process: open event streams end at once on SIGTERM
(they never end by themselves, and the server waits for open responses), and `?token=` on
the page or the stream never reaches the access log."""

from __future__ import annotations

import os
import signal
import time

import httpx

from entitled.settings import Settings
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs
from tests.support.system import ready

TOKEN = "tok_stream_never_logged_51e0"


def test_sigterm_ends_open_streams_and_the_log_hides_the_token(
    settings: Settings, procs: Procs
) -> None:
    migrate = procs.spawn("migrate")
    assert migrate.popen is not None and migrate.popen.wait(120) == 0, migrate.tail()
    port = free_port()
    api = procs.spawn("api", "--port", str(port), ENTITLED_API_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url), 90, "api ready", procs)
    assert api.popen is not None

    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=30)) as client:
        assert client.get("/", params={"token": TOKEN}).status_code == 200
        streams = [
            client.stream("GET", "/v1/changes/stream", params={"token": TOKEN, "after": n})
            for n in (0, 5)
        ]
        rests: list[list[str]] = []
        try:
            responses = [s.__enter__() for s in streams]
            lines = [r.iter_lines() for r in responses]
            assert [r.status_code for r in responses] == [200, 200]
            assert [next(it) for it in lines] == ["retry: 2000", "retry: 2000"]
            stopped_at = time.monotonic()
            os.killpg(api.popen.pid, signal.SIGTERM)
            rests = [list(it) for it in lines]  # read until the server ends each stream
            ended_in = time.monotonic() - stopped_at
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    # uvicorn re-raises the signal it handled once it has shut down cleanly.
    assert api.popen.wait(15) in (0, -signal.SIGTERM), api.tail()
    assert rests[1][:2] == ["id: 5", "event: ready"]
    # Ended by the shutdown itself, well before uvicorn's graceful timeout (5 s) cancels.
    assert ended_in < 4, ended_in

    log = api.log.read_text(errors="replace")
    assert "/v1/changes/stream?token=***" in log  # the access log did see the requests
    assert TOKEN not in log
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
