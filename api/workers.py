"""`entitled api` as several worker processes on one port (`ENTITLED_API_WORKERS`).

One Python process answers on one core at most (the GIL), and a search answered from the
read model is nothing but CPU: on a host with spare cores, N workers answer up to N times
as many. The parent binds the port (a taken port fails at once, before any worker starts)
and spawns N workers (fresh interpreters: nothing crosses but the listening socket and the
environment); each accepts from that one socket, so the kernel hands every new connection
to whichever worker takes it first.

Each worker is a whole `entitled api`: its own pool (up to 10 connections), LISTEN
connection, replica readers and read model, so the model's memory and the connections are
N times those of one process; every contract of one process (freshness, `min_event`, the
drain on SIGTERM) holds in each.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker (each drains as
one `entitled api` does, `entitled.serving`; a second one skips the delay), and the parent
exits 0 once all have. A worker that exits by itself (a crash, a failed start) makes the
parent stop the others and exit 1, so the process manager restarts the API whole rather
than leave it quietly serving at a fraction. A worker whose parent is gone (killed) drains
and exits by itself.

Metrics: the parent gives the workers a private `PROMETHEUS_MULTIPROC_DIR`, so `/metrics`,
whichever worker answers it, counts every worker (`api.metrics`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType

from prometheus_client import multiprocess

__all__ = ["serve"]

log = logging.getLogger("entitled.api")

_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
Serve = Callable[[socket.socket], None]  # a worker's server on the bound socket; picklable


def serve(workers: int, sock: socket.socket, target: Serve) -> int:
    """Run `workers` processes of `target(sock)` until SIGTERM/SIGINT (module doc); the
    exit status: 0 when every worker stopped cleanly on a signal, else 1."""
    metrics_dir = tempfile.mkdtemp(prefix="entitled-api-metrics-")
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(
            target=_worker, args=(target, sock, os.getpid()), name=f"entitled-api-{k + 1}"
        )
        for k in range(workers)
    ]
    stopping = False
    failed = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # the workers' environment (read by their imports), not this process's: its own
        # metrics stay its own
        before = os.environ.get(_METRICS_DIR)
        os.environ[_METRICS_DIR] = metrics_dir
        try:
            for proc in procs:
                if stopping:
                    break
                proc.start()
        finally:
            if before is None:
                del os.environ[_METRICS_DIR]
            else:
                os.environ[_METRICS_DIR] = before
        running = [p for p in procs if p.pid is not None]
        if stopping:  # a signal while they started: one may have started after it
            stop(signal.SIGTERM, None)
        log.info("api: %d workers: %s", len(running), ", ".join(str(p.pid) for p in running))
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
            for proc in [p for p in running if p.exitcode is not None]:
                running.remove(proc)
                assert proc.pid is not None
                multiprocess.mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
                if proc.exitcode != 0 or not stopping:
                    failed = True
                if not stopping:
                    log.error(
                        "api worker %s exited (status %s): stopping the others",
                        proc.pid,
                        proc.exitcode,
                    )
                    stop(signal.SIGTERM, None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for proc in procs:
            if proc.exitcode is None and proc.pid is not None:
                proc.kill()
                proc.join(5)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def _worker(target: Serve, sock: socket.socket, parent: int) -> None:
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    target(sock)


def _orphaned(parent: int) -> None:
    """Drain and exit (SIGTERM to itself) once the parent is gone: nobody supervises."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def bound_socket(host: str, port: int) -> socket.socket:
    """The listening socket the workers share, as uvicorn binds its own."""
    import uvicorn

    # uvicorn logs why and exits 1 when it cannot (the address in use)
    return uvicorn.Config(app="api.app:unused", host=host, port=port).bind_socket()
