"""`entitled dev` as a user runs it: a real subprocess, real children, real HTTP, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from entitled.settings import Settings
from launcher import services as svc
from launcher.services._process import pid_alive
from launcher.stripe import events as se
from tests.support.polling import get, wait_until

# It runs `entitled dev` (its own Kafka, PostgreSQL and processes): the integration tier.
pytestmark = pytest.mark.integration

# Starting Kafka's JVM alone took 96 s on the shared 2-core machine at load 50 (dev ready
# at 132 s): a deadline, not a sleep, so a quiet machine passes as fast as before.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 40.0
# what `entitled dev` starts besides the services
DEV_CHILDREN = {"ingest", "worker", "relay", "hydrate", "api"}


class Dev:
    """One `entitled dev` subprocess with its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.home = Path(env["ENTITLED_HOME"])
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "dev", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.child_pids: dict[str, int] = {}

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def report(self) -> str:
        """What a timeout shows: the output so far."""
        return f"--- entitled dev output ---\n{self.text()}"

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> dict[str, str]:
        """Wait for the summary; return its fields (page, webhook, secret, ...)."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"entitled dev exited early:\n{self.text()}")
            return any(line.startswith("Ctrl-C stops") for line in self.lines)

        wait_until(ready, START_TIMEOUT_S, "entitled dev to print its URLs", self)
        fields = {}
        for line in self.lines:
            m = re.match(r"^  (page|search|webhook|secret|read token|admin|logs)\s+(\S+)", line)
            if m:
                fields[m[1]] = m[2]
        pids = json.loads((self.home / "dev.pids").read_text())
        assert pids["dev"] == self.popen.pid
        self.child_pids = pids["children"]
        return fields

    def interrupt(self) -> int:
        """Ctrl-C; return dev's exit code once every child is gone."""
        os.kill(self.popen.pid, signal.SIGINT)
        try:
            code = self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"entitled dev still runs after SIGINT:\n{self.text()}") from None
        self.reader.join(5)
        return code

    def cleanup(self) -> None:
        """Leave nothing running (after a failed test), close the pipe."""
        for pid in [self.popen.pid, *self.child_pids.values()]:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self.reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def dev_environment(home: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLED_", "STRIPE_"))}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("DATABASE_URL", None)
    env.update(ENTITLED_HOME=str(home), ENTITLED_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@contextlib.contextmanager
def running(env: dict[str, str], *args: str) -> Iterator[Dev]:
    run = Dev(env, "--ingest-port", "0", "--api-port", "0", *args)
    try:
        yield run
    finally:
        run.cleanup()
        # pytest shows this only when the test failed.
        print(f"--- entitled dev output ---\n{run.text()}", file=sys.stderr)


# The read token `entitled dev` printed, per API base URL (`api_base` records it).
_READ_TOKENS: dict[str, str] = {}


def search(api: str, customer: str, q: str) -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {_READ_TOKENS[api]}"}
    r = get(f"{api}/v1/search", params={"customer": customer, "q": q}, headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return {hit["title"]: hit for hit in r.json()["results"]}


def can_watch(api: str, customer: str, q: str, title: str, reason: str) -> bool:
    hit = search(api, customer, q).get(title)
    return bool(hit and hit["available"] and hit["reason"] == reason)


def api_base(fields: dict[str, str]) -> str:
    """The API's base URL from the printed page link (`/?customer=...#token=<read token>`)."""
    base = fields["page"].partition("?")[0].rstrip("/")
    _READ_TOKENS[base] = fields["read token"]
    return base


def post_signed(url: str, event: dict[str, Any], secret: str) -> httpx.Response:
    body = se.encode(event)
    headers = {"Stripe-Signature": se.sign_header(body, secret)}
    return httpx.post(url, content=body, headers=headers, timeout=10)


@pytest.fixture
def given_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """`entitled dev` in a fresh home, with the test's Kafka, Postgres and topic given."""
    return dev_environment(
        tmp_path / "home",
        settings.cache,
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers or "",
        DATABASE_URL=settings.database_url or "",
        ENTITLED_TOPIC=settings.topic,
    )


def test_dev_serves_demo_data_takes_webhooks_and_stops_on_ctrl_c(
    settings: Settings, tmp_path: Path, given_env: dict[str, str]
) -> None:
    env = given_env
    with running(env) as run:
        fields = run.wait_ready()
        api, webhook, secret = api_base(fields), fields["webhook"], fields["secret"]
        assert webhook.endswith("/webhooks/stripe")
        assert secret.startswith("whsec_")
        assert (tmp_path / "home" / "dev-webhook-secret").read_text().strip() == secret
        assert set(run.child_pids) == DEV_CHILDREN
        assert all(pid_alive(pid) for pid in run.child_pids.values())

        page = httpx.get(fields["page"], timeout=5)
        assert page.status_code == 200 and "<title>WebFlicks</title>" in page.text
        # The page link carries the read token (in the fragment), never the admin token; the
        # API is closed: no token, no read; the read token reads; only the admin token lists
        # every customer. Each printed token is the one this run generated and kept.
        read, admin = fields["read token"], fields["admin"]
        assert fields["page"].endswith(f"#token={read}") and admin not in fields["page"]
        assert (tmp_path / "home" / "dev-api-token").read_text().strip() == read
        assert (tmp_path / "home" / "dev-admin-token").read_text().strip() == admin
        assert httpx.get(f"{api}/v1/customers/cus_demo_alice/entitlements").status_code == 401
        customers = f"{api}/v1/customers"
        assert httpx.get(customers, headers={"Authorization": f"Bearer {read}"}).status_code == 403
        assert httpx.get(customers, headers={"Authorization": f"Bearer {admin}"}).status_code == 200

        # The demo events went through the log and the worker.
        wait_until(
            lambda: can_watch(
                api, "cus_demo_alice", "harrison ford", "Air Force One", "subscription"
            ),
            30,
            "alice's action subscription",
            run,
        )
        title = "Indiana Jones and the Last Crusade"
        assert can_watch(api, "cus_demo_bob", "indiana", title, "purchase")
        assert not search(api, "cus_demo_carol", "toy story")["Toy Story"]["available"]

        # A new event signed with the printed secret, to the printed URL, lands.
        sub = se.subscription(
            customer="cus_demo_carol", items=[("price_demo_animated", "prod_demo_animated")]
        )
        event = se.event("customer.subscription.created", sub)
        assert post_signed(webhook, event, "whsec_wrong").status_code == 400
        r = post_signed(webhook, event, secret)
        assert r.status_code == 200 and r.json()["id"] == event["id"], r.text
        wait_until(
            lambda: can_watch(api, "cus_demo_carol", "toy story", "Toy Story", "subscription"),
            30,
            "carol's new animated subscription",
            run,
        )

        assert run.interrupt() == 0, run.text()
        alive = {name: pid for name, pid in run.child_pids.items() if pid_alive(pid)}
        assert not alive, f"children left running: {alive}"
        assert not (tmp_path / "home" / "dev.pids").exists()
    # Services given by the environment are not dev's to stop.
    with psycopg.connect(settings.database_url or "") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_dev_stops_everything_and_fails_when_a_child_dies(
    tmp_path: Path, given_env: dict[str, str]
) -> None:
    env = given_env
    with running(env) as run:
        run.wait_ready()
        os.kill(run.child_pids["worker"], signal.SIGKILL)
        try:
            code = run.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("entitled dev goes on without its worker") from None
        run.reader.join(5)
        assert code == 1
        died = next(i for i, line in enumerate(run.lines) if "exited unexpectedly" in line)
        assert "worker exited unexpectedly with code -9" in run.lines[died]
        # Followed by the tail of the worker's log.
        worker_log = (tmp_path / "home" / "logs" / "worker.log").read_text()
        assert run.lines[died + 1].strip() and run.lines[died + 1] in worker_log
        alive = {name: pid for name, pid in run.child_pids.items() if pid_alive(pid)}
        assert not alive, f"children left running: {alive}"


def test_dev_refuses_a_taken_port(services: svc.Endpoints, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dev_environment(
            tmp_path / "home",
            Settings().cache,
            KAFKA_BOOTSTRAP_SERVERS=services.bootstrap,
            DATABASE_URL=services.database_url,
        )
        out = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "dev", "--ingest-port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode != 0
    assert f"port {port}" in out.stderr and "taken" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "home" / "logs").exists()


def processes_of(home: Path) -> list[str]:
    """Command lines of running processes that mention `home` (Kafka, PostgreSQL, children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(home) in cmdline and pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture
def private_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="ent-dev-"))
    # mkdtemp makes it 0700: the postgres system user must get through it.
    home.chmod(home.stat().st_mode | stat.S_IXOTH)
    try:
        yield home
    finally:
        with contextlib.suppress(svc.ServicesError):
            svc.down(Settings(home=home), wipe=True)
        shutil.rmtree(home, ignore_errors=True)


def test_first_run_starts_and_stops_its_own_services_and_a_restart_keeps_edits(
    private_home: Path,
) -> None:
    env = dev_environment(private_home, Settings().cache)
    with running(env) as run:
        fields = run.wait_ready()
        api = api_base(fields)
        assert "and the local kafka and postgres" in run.text()
        assert processes_of(private_home / "services"), "no local services are running"
        wait_until(
            lambda: can_watch(api, "cus_demo_alice", "die hard", "Die Hard", "subscription"),
            30,
            "alice's demo subscription",
            run,
        )
        # A catalogue edit by the user...
        r = httpx.put(
            f"{api}/v1/movies/3",
            json={"title": "Die Hard (edited)", "keywords": "bruce willis", "groups": ["action"]},
            headers={"Authorization": f"Bearer {fields['admin']}"},  # the printed admin token
            timeout=5,
        )
        assert r.status_code == 200, r.text
        assert run.interrupt() == 0, run.text()
    left = processes_of(private_home)
    assert not left, "\n".join(left)

    # ...survives a restart: the demo catalogue loads into an empty catalogue only.
    with running(env) as run:
        fields = run.wait_ready()
        api = api_base(fields)
        assert "demo catalogue: kept" in run.text()
        assert can_watch(api, "cus_demo_alice", "bruce willis", "Die Hard (edited)", "subscription")
        assert run.interrupt() == 0, run.text()
    left = processes_of(private_home)
    assert not left, "\n".join(left)


def _read_until(popen: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read `popen`'s stdout until `marker` shows up; fail with what it printed when it
    exits first or the deadline passes."""
    assert popen.stdout is not None
    fd, out = popen.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} after {timeout:.0f} s:\n{out.decode()}")
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"entitled dev exited early:\n{out.decode()}")
            out += chunk
    return out


def test_dev_stops_everything_when_its_stdout_is_gone(private_home: Path) -> None:
    """`entitled dev | tee dev.log`, then Ctrl-C: tee dies first, so every later write of dev
    fails (EPIPE). Dev must still stop its children and the services it started."""
    env = dev_environment(private_home, Settings().cache)
    popen = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "dev", "--ingest-port", "0", "--api-port=0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # `2>&1 | tee`: error messages have nowhere to go either
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _read_until(popen, b"Ctrl-C stops", START_TIMEOUT_S)
        children = json.loads((private_home / "dev.pids").read_text())["children"]
        report = svc.status(Settings(home=private_home))
        started = {
            **children,
            "postgres": report["postgres"]["pid"],
            **{f"kafka{n['node_id']}": n["pid"] for n in report["kafka"]["nodes"]},
        }
        assert set(children) == DEV_CHILDREN
        assert all(pid_alive(pid) for pid in started.values()), started

        assert popen.stdout is not None
        popen.stdout.close()  # the reader is gone: tee died of the same Ctrl-C
        os.kill(popen.pid, signal.SIGINT)
        try:
            code = popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("entitled dev still runs after SIGINT") from None

        def left() -> dict[str, int]:
            return {name: pid for name, pid in started.items() if pid_alive(pid)}

        try:
            wait_until(lambda: not left(), 30, "everything dev started to stop")
        except AssertionError:
            raise AssertionError(f"left running after dev exited ({code}): {left()}") from None
        assert code == 0
        assert processes_of(private_home) == []
        assert not (private_home / "dev.pids").exists()
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)


def test_dev_stops_its_services_when_start_up_fails(private_home: Path) -> None:
    # Kafka refuses the topic name once both services are up: the failure comes after
    # dev started them, and they go with it.
    env = dev_environment(private_home, Settings().cache, ENTITLED_TOPIC="no spaces allowed")
    out = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "dev", "--ingest-port", "0", "--api-port=0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + STOP_TIMEOUT_S,
    )
    output = out.stdout + out.stderr
    assert out.returncode == 1, output
    assert "Creating Kafka topic 'no spaces allowed' failed" in output
    assert "Traceback" not in output
    assert "stopped the local kafka and postgres" in output
    left = processes_of(private_home)
    assert not left, "\n".join(left)
