"""Fixture `system`: the whole pipeline as real subprocesses, configured like production.

`entitled migrate`, then `entitled ingest`, `entitled worker` and `entitled api`, each with
the test `settings` as its environment (a fresh topic and database on the session services).
Use it from a test module with `from system import System, system  # noqa: F401`.

At the end the three are terminated (killed if they do not stop in time); the log tails
are printed to stderr, which pytest shows when the test failed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from entitled.settings import Settings
from entitled.shell import stripe_events as se
from entitled.shell.services._process import free_port
from tests import processes

ENTITLED = str(Path(sys.executable).with_name("entitled"))
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


@dataclass
class System:
    ingest_url: str
    api_url: str
    secret: str
    settings: Settings
    logs: dict[str, Path] = field(default_factory=dict)

    def post_event(self, event: Mapping[str, Any]) -> httpx.Response:
        """POST `event` to the ingest, signed as Stripe would sign it."""
        body = se.encode(event)
        headers = {
            "Stripe-Signature": se.sign_header(body, self.secret),
            "Content-Type": "application/json",
        }
        return httpx.post(f"{self.ingest_url}/webhooks/stripe", content=body, headers=headers)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `entitled ARGS...` with the system's environment."""
        return subprocess.run(
            [ENTITLED, *args],
            env=processes.environment(self.settings),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def tails(self, lines: int = 40) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            out.append(f"----- {name} ({path}) -----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def system(settings: Settings, tmp_path: Path) -> Iterator[System]:
    env = processes.environment(settings)
    migrate = subprocess.run(
        [ENTITLED, "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    ingest_port, api_port = free_port(), free_port()
    commands = {
        "ingest": [ENTITLED, "ingest", "--port", str(ingest_port)],
        "worker": [ENTITLED, "worker"],
        "api": [ENTITLED, "api", "--port", str(api_port)],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sys_ = System(
        ingest_url=f"http://127.0.0.1:{ingest_port}",
        api_url=f"http://127.0.0.1:{api_port}",
        secret=settings.webhook_secrets[0],
        settings=settings,
    )
    try:
        for name, cmd in commands.items():
            log = tmp_path / f"{name}.log"
            sys_.logs[name] = log
            with log.open("wb") as fh:
                procs[name] = subprocess.Popen(
                    cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path
                )
        deadline = time.monotonic() + START_TIMEOUT_S
        for name, url in (("ingest", sys_.ingest_url), ("api", sys_.api_url)):
            while not _ready(url):
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    raise AssertionError(f"{dead} exited during startup\n{sys_.tails()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready in time\n{sys_.tails()}")
                time.sleep(0.1)
        yield sys_
    finally:
        _stop(procs)
        # pytest shows captured teardown output only when the test failed: exactly then.
        print(sys_.tails(), file=sys.stderr)
