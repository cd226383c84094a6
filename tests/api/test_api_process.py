"""The read API as a real `entitled api` process, in two workers (`api.workers`): searches
reach both, each with its own read model, and `/metrics` counts both whichever answers it;
open event streams end at once on SIGTERM (they never end by themselves, and the server
waits for open responses), and `?token=` on the page or the stream never reaches the access
log."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

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
    api = procs.spawn("api", "--port", str(port), "--workers", "2", ENTITLED_API_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url), 90, "api ready", procs)
    assert api.popen is not None
    workers = _workers(api.popen.pid)
    assert len(workers) == 2, workers

    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=30)) as client:
        sent = 0

        def both_models_answered() -> bool:
            # a new connection each: the workers take turns accepting as they are free
            nonlocal sent
            for _ in range(4):
                found = client.get(
                    "/v1/search",
                    params={"customer": "cus_w", "q": "two workers"},
                    headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
                )
                assert found.status_code == 200, found.text
                sent += 1
            # the one answer, kept by each worker's model that was asked it
            return _metric(client, "entitled_api_read_model_entries", kind="answers") == 2

        wait_until(both_models_answered, 30, "searches answered by both workers", procs)
        # whichever worker answers the scrape, every search by either is counted (the
        # other's counts are copied to the shared files every second)
        wait_until(
            lambda: _metric(client, "entitled_api_read_model_searches_total") == sent,
            10,
            f"/metrics counting all {sent} searches",
            procs,
        )
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
            os.kill(api.popen.pid, signal.SIGTERM)  # to the parent: it tells the workers
            rests = [list(it) for it in lines]  # read until the server ends each stream
            ended_in = time.monotonic() - stopped_at
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    # uvicorn re-raises the signal it handled once it has shut down cleanly.
    assert api.popen.wait(15) in (0, -signal.SIGTERM), api.tail()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker is left"
    assert rests[1][:2] == ["id: 5", "event: ready"]
    # Ended by the shutdown itself, well before uvicorn's graceful timeout (5 s) cancels.
    assert ended_in < 4, ended_in

    log = api.log.read_text(errors="replace")
    assert "/v1/changes/stream?token=***" in log  # the access log did see the requests
    assert TOKEN not in log
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]


def _workers(pid: int) -> list[int]:
    """The worker processes of an `entitled api --workers N` (not multiprocessing's tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of `name`'s samples with `labels` in one scrape of /metrics."""
    text = client.get("/metrics", headers={"Connection": "close"}).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
