"""The child processes of `entitled dev`: start with a log file, watch, follow, stop.

Each child runs in its own session (process group), so a Ctrl-C in the terminal reaches
`entitled dev` alone, which then stops the children in order and waits for them; the
children never see a signal dev did not send.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

ENTITLED = [sys.executable, "-m", "launcher.cli"]


def echo(text: str = "") -> None:
    """`click.echo` that outlives its reader.

    `entitled dev | tee dev.log`, then Ctrl-C: tee dies of the same signal, and every later
    write fails (EPIPE; EIO once a terminal has hung up). A message must never be the reason
    dev leaves Kafka and PostgreSQL running, so after the first failed write stdout goes to
    /dev/null (the Python docs' advice for EPIPE) and dev carries on stopping.
    """
    try:
        click.echo(text)
    except OSError:
        _silence_stdout()
    except RuntimeError:  # "reentrant call": a signal handler's message during another write
        pass


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())  # later writes and the flush at exit succeed
    except (AttributeError, ValueError, OSError):  # not a real file (tests); nothing to do
        pass
    finally:
        os.close(devnull)


class ChildDied(Exception):
    """A child exited while `entitled dev` still needed it."""

    def __init__(self, child: Child) -> None:
        self.child = child
        super().__init__(f"{child.name} exited unexpectedly with code {child.returncode}")


class Child:
    """One `entitled <args>` process; its output is appended to `log`."""

    def __init__(self, name: str, args: Sequence[str], log: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"---- entitled dev: `entitled {' '.join(self.args)}` {stamp}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                [*ENTITLED, *self.args],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        # The whole process group: whatever the child started goes too.
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log})"
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Every child dev started, in start order."""

    def __init__(self) -> None:
        self.all: list[Child] = []

    def start(self, child: Child, env: Mapping[str, str], cwd: Path) -> Child:
        self.all.append(child)
        child.start(env, cwd)
        return child

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.all if c.pid is not None}

    def check(self) -> None:
        """Raise `ChildDied` for the first child that is no longer running."""
        for child in self.all:
            if not child.alive:
                raise ChildDied(child)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every child (in reverse start order), SIGKILL those alive after the timeout;
        return once every one has exited (and been reaped)."""
        for child in reversed(self.all):
            if child.alive:
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.all):
            if child.popen is None:
                continue
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                echo(f"dev: {child.name} did not stop in {timeout_s:.0f} s: killing it")
                child.signal_group(signal.SIGKILL)
                child.popen.wait()
            # Anything the child left behind in its group goes with it.
            child.signal_group(signal.SIGKILL)


class Follower:
    """Echo new lines of the children's logs with a `name |` prefix (`entitled dev --follow`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.offsets: dict[Path, int] = {}
        self.names: dict[Path, str] = {}

    def add(self, child: Child) -> None:
        """Follow `child`'s log from its current end (call it before starting the child)."""
        if self.enabled:
            self.names[child.log] = child.name
            try:
                self.offsets[child.log] = child.log.stat().st_size
            except FileNotFoundError:
                self.offsets[child.log] = 0

    def pump(self) -> None:
        for log, offset in self.offsets.items():
            try:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            complete = data.rfind(b"\n") + 1  # a half-written line waits for the next pump
            if not complete:
                continue
            self.offsets[log] = offset + complete
            prefix = f"{self.names[log]:>6} | "
            for line in data[:complete].decode(errors="replace").splitlines():
                echo(prefix + line)
