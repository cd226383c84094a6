"""The whole system as real processes, configured like production: the one launcher.

`start_system(procs)` migrates the test's database (and loads the demo catalogue) in-process
(`entitled migrate` and `entitled catalog load` have tests of their own), then starts
`entitled ingest` (one or more), `entitled worker` (zero or more), `entitled api` (one or
more), and on request relays and hydrators, with the test's settings as their environment,
and waits until the HTTP ones answer /readyz. Workers, relays and hydrators serve /metrics,
/livez and /readyz on a port of their own (`System.probe_urls`).
The fixture `system` does that for one ingest, one worker and the api. Every process
belongs to the test's `procs`: all stopped at its end, their log tails shown on failure.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import load_catalog, migrate
from tests.support.polling import get, wait_until
from tests.support.ports import free_port
from tests.support.processes import ENTITLED, Proc, Procs, environment


def signed(event: Mapping[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """The body of `event` and the headers Stripe would send with it."""
    body = se.encode(event)
    return body, {
        "Stripe-Signature": se.sign_header(body, secret),
        "Content-Type": "application/json",
    }


def ready(url: str) -> bool:
    """`url` answers 200 on /readyz."""
    try:
        return get(f"{url}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class System:
    """The running processes of one test and where they answer."""

    procs: Procs
    env: dict[str, str]  # what each process got on top of the test's environment
    ingests: list[Proc] = field(default_factory=list)
    ingest_urls: list[str] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    api: Proc | None = None  # the first api
    api_url: str = ""
    apis: list[Proc] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)
    relays: list[Proc] = field(default_factory=list)
    hydrators: list[Proc] = field(default_factory=list)
    probe_urls: dict[int, str] = field(default_factory=dict)  # id(proc) -> its /metrics server

    @property
    def settings(self) -> Settings:
        return self.procs.settings

    @property
    def ingest_url(self) -> str:
        return self.ingest_urls[0]

    @property
    def secret(self) -> str:
        return self.settings.webhook_secrets[0]

    def post_event(self, event: Mapping[str, Any]) -> httpx.Response:
        """POST `event` to the (first) ingest, signed as Stripe would sign it."""
        body, headers = signed(event, self.secret)
        return httpx.post(f"{self.ingest_url}/webhooks/stripe", content=body, headers=headers)

    def add_ingest(self, url: str | None = None) -> Proc:
        """Start one more `entitled ingest`, or one in place of a dead one at `url` (same
        port: the clients' URLs keep working)."""
        port = int(url.rsplit(":", 1)[1]) if url else free_port()
        ingest = self.procs.spawn(
            "ingest", "--port", str(port), "--log-level", "warning", **self.env
        )
        self.ingests.append(ingest)
        if url is None:
            self.ingest_urls.append(f"http://127.0.0.1:{port}")
        self.probe_urls[id(ingest)] = f"http://127.0.0.1:{port}"
        return ingest

    def add_worker(self) -> Proc:
        """Start one more `entitled worker` (after a SIGKILL, say)."""
        worker = self._probed("worker", "--metrics-port")
        self.workers.append(worker)
        return worker

    def add_worker_with(self, **env: str) -> Proc:
        """Start one more `entitled worker` with `env` on top (a new release's settings)."""
        port = free_port()
        worker = self.procs.spawn("worker", "--metrics-port", str(port), **{**self.env, **env})
        self.probe_urls[id(worker)] = f"http://127.0.0.1:{port}"
        self.workers.append(worker)
        return worker

    def add_relay(self) -> Proc:
        relay = self._probed("relay", "--metrics-port")
        self.relays.append(relay)
        return relay

    def add_hydrator(self) -> Proc:
        hydrator = self._probed("hydrate", "--metrics-port")
        self.hydrators.append(hydrator)
        return hydrator

    def add_api(self) -> Proc:
        port = free_port()
        api = self.procs.spawn("api", "--port", str(port), "--log-level", "warning", **self.env)
        self.apis.append(api)
        self.api_urls.append(f"http://127.0.0.1:{port}")
        self.probe_urls[id(api)] = self.api_urls[-1]
        if self.api is None:
            self.api, self.api_url = api, self.api_urls[-1]
        return api

    def probe_url(self, proc: Proc) -> str:
        """Where `proc` answers /livez, /readyz (and /metrics)."""
        return self.probe_urls[id(proc)]

    def _probed(self, command: str, flag: str) -> Proc:
        if command == "worker" and self.env.get("ENTITLED_WORKER_METRICS_PORT"):
            # the test chose the port (and maybe the host) itself: leave it to the setting
            proc = self.procs.spawn(command, **self.env)
            self.probe_urls[id(proc)] = (
                f"http://127.0.0.1:{self.env['ENTITLED_WORKER_METRICS_PORT']}"
            )
            return proc
        port = free_port()
        proc = self.procs.spawn(command, flag, str(port), **self.env)
        self.probe_urls[id(proc)] = f"http://127.0.0.1:{port}"
        return proc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `entitled ARGS...` to its end with the system's environment."""
        return subprocess.run(
            [*ENTITLED, *args],
            env=environment(self.settings, **self.env),
            capture_output=True,
            text=True,
            timeout=120,
        )


def start_system(
    procs: Procs,
    *,
    ingests: int = 1,
    workers: int = 1,
    api: bool = True,
    apis: int = 1,
    relays: int = 0,
    hydrators: int = 0,
    catalog: bool = True,
    **env: str,
) -> System:
    """Migrate (and load the demo catalogue unless `catalog=False`), then start the
    processes (each with `env` added); return once the HTTP ones are ready (`api=False`:
    no read API)."""
    url = procs.settings.database_url
    assert url is not None
    migrate(url)
    if catalog:
        load_catalog(url)
    system = System(procs, dict(env))
    for _ in range(ingests):
        system.add_ingest()
    for _ in range(workers):
        system.add_worker()
    for _ in range(apis if api else 0):
        system.add_api()
    for _ in range(relays):
        system.add_relay()
    for _ in range(hydrators):
        system.add_hydrator()
    for http in [*system.ingest_urls, *system.api_urls]:
        wait_until(functools.partial(ready, http), 90, f"{http}/readyz", procs)
    return system


@pytest.fixture
def system(procs: Procs) -> Iterator[System]:
    """One ingest, one worker and the api on the test's fresh topic and database."""
    yield start_system(procs, catalog=False)
