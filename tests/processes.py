"""Real `entitled` processes for integration tests: spawn with a test's settings, stop,
SIGKILL, and show their log tails when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from entitled.settings import Settings
from tests.helpers import wait_for

ENTITLED = [sys.executable, "-m", "entitled.shell.cli"]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment an `entitled` process needs to use the test's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLED_", "STRIPE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers or "",
        DATABASE_URL=settings.database_url or "",
        ENTITLED_TOPIC=settings.topic,
        # one consumer group per test: a dying worker of one test never stalls another's
        ENTITLED_CONSUMER_GROUP=f"entitled-worker-{settings.topic}",
        ENTITLED_PARTITIONS=str(settings.partitions),
        ENTITLED_HOME=str(settings.home),
        STRIPE_WEBHOOK_SECRET=",".join(settings.webhook_secrets),
        PYTHONUNBUFFERED="1",
        # so that a process can import test-only rule plugins (tests.processors.buggy_rules)
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    env.update(extra)
    return env


class Proc:
    """One `entitled <args>` subprocess with its output in a log file."""

    def __init__(self, args: Iterable[str], env: Mapping[str, str], log: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [*ENTITLED, *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no commit, as a crash."""
        if self.popen is not None and self.alive:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.popen is None or not self.alive:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])


class Procs:
    """Every process a test started; all stopped at the end, tails printed on failure."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.all: list[Proc] = []

    def spawn(self, *args: str, name: str | None = None, **env: str) -> Proc:
        n = len(self.all)
        log = self.log_dir / f"{name or args[0]}-{n}.log"
        proc = Proc(args, environment(self.settings, **env), log).start()
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.all:
            p.stop()

    def report(self) -> str:
        return "\n\n".join(f"--- {' '.join(p.args)} ({p.log}) ---\n{p.tail()}" for p in self.all)


def wait_until(predicate: Any, timeout: float, what: str, procs: Procs | None = None) -> Any:
    """`tests.helpers.wait_for`, with the processes' log tails when it times out."""
    try:
        return wait_for(predicate, timeout, what, interval=0.1)
    except AssertionError as exc:
        if procs is None:
            raise
        raise AssertionError(f"{exc}\n{procs.report()}") from None
