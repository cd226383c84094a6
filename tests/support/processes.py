"""Real `entitled` processes for integration tests: spawn with a test's settings, stop,
SIGKILL, and show their log tails when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from entitled.settings import Settings

ENTITLED = [sys.executable, "-m", "launcher.cli"]
REPO = Path(__file__).resolve().parents[2]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment an `entitled` process needs to use the test's services."""
    # one consumer group per test: a dying worker of one test never stalls another's
    own = replace(settings, consumer_group=f"entitled-worker-{settings.topic}")
    env = own.child_env(os.environ)
    # so that a process can import test-only rule plugins (tests.processors.buggy_rules)
    env["PYTHONPATH"] = str(REPO)
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
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [*ENTITLED, *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has ended (within `timeout` s)."""
        assert self.popen is not None
        return self.popen.wait(timeout)

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

    def run(self, *args: str, name: str | None = None, timeout: float = 120, **env: str) -> Proc:
        """`entitled <args>` to its end; fail with its output unless it exits 0."""
        proc = self.spawn(*args, name=name, **env)
        assert proc.wait(timeout) == 0, proc.tail()
        return proc

    def stop_all(self) -> None:
        for p in self.all:
            p.stop()

    def report(self) -> str:
        return "\n\n".join(f"--- {' '.join(p.args)} ({p.log}) ---\n{p.tail()}" for p in self.all)
