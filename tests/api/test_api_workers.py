"""`api.workers`: the supervisor of `entitled api --workers N`, on stand-in workers: a worker
that dies by itself ends the others, and the parent exits 1. (Real workers, and one SIGTERM
to the parent stopping them all with exit 0: tests/api/test_api_process.py.)"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from api import workers
from tests.support.polling import wait_until


def _until_sigterm(started: Path, sock: socket.socket) -> None:
    """A worker: says it started (a file named by its pid, once SIGTERM is handled), then
    serves (nothing) until SIGTERM and returns (exit 0)."""
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    (started / str(os.getpid())).touch()
    while not stop.wait(0.05):
        pass


def _serve_while(started: Path, act: threading.Thread) -> int:
    sock = workers.bound_socket("127.0.0.1", 0)
    act.start()
    try:
        return workers.serve(2, sock, functools.partial(_until_sigterm, started))
    finally:
        act.join(10)
        sock.close()


def _both_started(started: Path) -> list[int]:
    def pids() -> list[int] | None:
        found = [int(p.name) for p in started.iterdir()]
        return found if len(found) == 2 else None

    return wait_until(pids, 30, "two workers started")


def _running() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("entitled-api-")]


def test_a_worker_that_dies_ends_the_others_and_exits_1(tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_one() -> None:
        killed.append(_both_started(tmp_path)[0])
        os.kill(killed[0], signal.SIGKILL)

    assert _serve_while(tmp_path, threading.Thread(target=kill_one)) == 1
    assert killed and _running() == []
    # the workers' metrics directory was theirs: this process's metrics stay its own
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
