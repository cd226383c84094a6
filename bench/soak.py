"""Soak: a steady rate of signed webhooks for minutes, with searches running alongside.

The whole system runs as real `entitled` processes (ingest, worker, api) over a real Kafka
and Postgres. Every posted event subscribes a new customer to the "action" package, so the
moment it is visible is the moment its customer appears in `live.customer_entitlements`
(one cheap batched poll every 25 ms). Reported: webhook-to-visible latency p50/p99, ingest
latency p50/p99, search latency and status counts, and the RSS of each process at start and
end (a leak shows as a climb). Figures are printed and written to `bench/results/soak.json`.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 200] [--searches 20]

Uses KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL when set, else starts the local services in a
temporary home (wiped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Run as `python bench/soak.py`, this folder would shadow the `ingest` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).parent.parent.resolve()))

import psycopg  # noqa: E402

from bench import _common as common  # noqa: E402
from entitled.settings import Settings  # noqa: E402
from launcher import services as svc  # noqa: E402
from launcher.stripe import events as se  # noqa: E402

SECRET = "whsec_soak_secret"
RESULTS = Path(__file__).parent / "results" / "soak.json"
ENTITLED = str(Path(sys.executable).with_name("entitled"))
ROOT = Path(__file__).resolve().parents[1]
WORDS = ["harrison", "ford", "desert", "christmas", "space", "love", "heist", "", "jones"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pct(values: list[float]) -> dict[str, float | int]:
    if len(values) < 2:
        return {"n": len(values)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _rss_mib(pid: int) -> float:
    """RSS of the process group led by `pid` (the entitled process and any children)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return round(total / 1024, 1)


class System:
    def __init__(self, settings: Settings, logs: Path) -> None:
        assert settings.kafka_bootstrap_servers and settings.database_url
        self.settings = settings
        self.logs = logs
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("ENTITLED_", "STRIPE_"))
        }
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
            DATABASE_URL=settings.database_url,
            ENTITLED_TOPIC=settings.topic,
            ENTITLED_HOME=str(settings.home),
            STRIPE_WEBHOOK_SECRET=SECRET,
            ENTITLED_MASTER_KEY=settings.master_key or "",
            PYTHONUNBUFFERED="1",
        )
        self.ingest_port, self.api_port = _free_port(), _free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> None:
        done = subprocess.run([ENTITLED, *args], env=self.env, capture_output=True, timeout=300)
        if done.returncode:
            raise SystemExit(f"entitled {' '.join(args)} failed:\n{done.stdout!r}{done.stderr!r}")

    def start(self) -> None:
        self.run("migrate")
        self.run("catalog", "load", str(ROOT / "projections" / "demo_catalog.jsonl"))
        commands = {
            "ingest": ["ingest", "--port", str(self.ingest_port), "--log-level", "warning"],
            "worker": ["worker"],
            "api": ["api", "--port", str(self.api_port), "--log-level", "warning"],
        }
        for name, args in commands.items():
            with (self.logs / f"{name}.log").open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    [ENTITLED, *args],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for port in (self.ingest_port, self.api_port):
            url = f"http://127.0.0.1:{port}/readyz"
            common.wait_http(url, None, f"{url} (logs in {self.logs})", 120)

    def rss(self) -> dict[str, float]:
        return {name: _rss_mib(p.pid) for name, p in self.procs.items()}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def _signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = se.encode(event)
    return body, {
        "Stripe-Signature": se.sign_header(body, SECRET),
        "Content-Type": "application/json",
    }


class _Events:
    """Distinct signed subscription events from one template (ids vary), so the load
    generator spends its time sending, not copying fixtures."""

    def __init__(self, run_id: str) -> None:
        sub = se.subscription(
            "sub_SOAKXXXXXXXXXXXX",
            customer="cus_SOAKXXXXXXXXXXXX",
            items=[("price_soak", "prod_PRODXXXXXX")],
        )
        self.template = se.encode(
            se.event("customer.subscription.created", sub, id="evt_SOAKXXXXXXXXXXXX")
        )
        self.run_id = run_id.encode()

    def customer(self, i: int) -> str:
        return f"cus_{self.run_id.decode()}{i:08d}"

    def __getitem__(self, i: int) -> tuple[bytes, dict[str, str]]:
        tag = self.run_id + b"%08d" % i  # 16 bytes: the customer is cus_<tag>
        prod = b"prod_action" if i % 2 else b"prod_animat"
        body = self.template.replace(b"SOAKXXXXXXXXXXXX", tag).replace(b"prod_PRODXXXXXX", prod)
        return body, {
            "Stripe-Signature": se.sign_header(body, SECRET),
            "Content-Type": "application/json",
        }


async def _ticks(rate: float, stop_at: float) -> AsyncIterator[tuple[int, float]]:
    """Tick `i` at start + i / rate (open loop) until `stop_at`, with how late it came."""
    begun = time.monotonic()
    i = 0
    while time.monotonic() < stop_at:
        due = begun + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        yield i, max(0.0, now - due)
        i += 1


async def _status(request: Any) -> str:
    """The status of one aiohttp request (entered here), or the name of its error."""
    import aiohttp

    try:
        async with request as r:
            await r.read()
            return str(r.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def soak(system: System, minutes: float, rate: float, searches: float) -> dict[str, Any]:
    import aiohttp

    ingest = f"http://127.0.0.1:{system.ingest_port}/webhooks/stripe"
    api = f"http://127.0.0.1:{system.api_port}"
    events = _Events(uuid.uuid4().hex[:8])
    ingest_lat: list[float] = []
    visible_lat: list[float] = []
    search_lat: list[float] = []
    statuses: dict[str, int] = {}
    search_statuses: dict[str, int] = {}
    posted: dict[str, float] = {}  # customer -> monotonic time the POST started
    customers: list[str] = []
    lag = {"max_s": 0.0}  # how far the open loop fell behind its schedule
    stop_at = time.monotonic() + minutes * 60
    rss_samples: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), timeout=timeout
    ) as client:
        for prod, groups in (("prod_action", "action"), ("prod_animat", "animated")):
            body, headers = _signed(se.event("product.created", se.product(prod, groups=groups)))
            async with client.post(ingest, data=body, headers=headers) as r:
                assert r.status == 200, await r.text()

        async def post(i: int) -> None:
            body, headers = events[i]
            cus = events.customer(i)
            started = time.monotonic()
            code = await _status(client.post(ingest, data=body, headers=headers))
            statuses[code] = statuses.get(code, 0) + 1
            if code == "200":
                ingest_lat.append(time.monotonic() - started)
                posted[cus] = started

        async def load() -> None:
            tasks: set[asyncio.Task[None]] = set()
            async for i, late in _ticks(rate, stop_at):
                lag["max_s"] = max(lag["max_s"], late)
                t = asyncio.create_task(post(i))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

        async def watch() -> None:
            assert system.settings.database_url
            async with await psycopg.AsyncConnection.connect(
                system.settings.database_url, autocommit=True
            ) as conn:
                while time.monotonic() < stop_at + 60 and (time.monotonic() < stop_at or posted):
                    if posted:
                        rows = await (
                            await conn.execute(
                                "SELECT customer FROM live.customer_entitlements "
                                "WHERE customer = ANY(%s)",
                                (list(posted),),
                            )
                        ).fetchall()
                        now = time.monotonic()
                        for (cus,) in rows:
                            visible_lat.append(now - posted.pop(cus))
                            customers.append(cus)
                    await asyncio.sleep(0.025)

        async def search() -> None:
            rng = random.Random(1)
            async for _ in _ticks(searches, stop_at):
                cus = rng.choice(customers) if customers else "cus_nobody"
                params = {"customer": cus, "q": rng.choice(WORDS)}
                started = time.monotonic()
                code = await _status(client.get(f"{api}/v1/search", params=params))
                search_statuses[code] = search_statuses.get(code, 0) + 1
                if code == "200":
                    search_lat.append(time.monotonic() - started)

        async def sample_rss() -> None:
            begun = time.monotonic()
            while time.monotonic() < stop_at:
                rss_samples.append({"t_s": round(time.monotonic() - begun), **system.rss()})
                await asyncio.sleep(30)

        await asyncio.gather(load(), watch(), search(), sample_rss())
    rss_samples.append({"t_s": round(minutes * 60), **system.rss()})
    return {
        "minutes": minutes,
        "rate_per_s": rate,
        "searches_per_s": searches,
        "posted": sum(statuses.values()),
        "load_fell_behind_max_s": round(lag["max_s"], 3),
        "ingest_statuses": statuses,
        "ingest_latency": _pct(ingest_lat),
        "visible": len(visible_lat),
        "never_visible": len(posted),
        "webhook_to_visible_latency": _pct(visible_lat),
        "search_statuses": search_statuses,
        "search_latency": _pct(search_lat),
        "rss_mib": {
            name: {"start": rss_samples[0][name], "end": rss_samples[-1][name]}
            for name in system.procs
        },
        "rss_samples": rss_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument("--searches", type=float, default=20.0, help="searches per second")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="entitled-soak-"))
    home.chmod(home.stat().st_mode | stat.S_IXOTH)  # the postgres user must get through
    own_services = not (
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL")
    )
    try:
        from entitled.crypto import new_master_key

        base = Settings(home=home)
        if own_services:
            ep = svc.up(base)
            bootstrap, db = ep.bootstrap, ep.database_url
        else:
            bootstrap, db = os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"]
        name = f"soak_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db = db.rsplit("/", 1)[0] + f"/{name}"
        settings = Settings(
            kafka_bootstrap_servers=bootstrap,
            database_url=db,
            topic=f"soak.{uuid.uuid4().hex[:6]}",
            home=home,
            master_key=new_master_key(),
        )
        logs = home / "logs"
        logs.mkdir()
        system = System(settings, logs)
        system.start()
        try:
            result = asyncio.run(soak(system, args.minutes, args.rate, args.searches))
        finally:
            system.stop()
        result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        result["postgres_fsync"] = own_services  # svc.up without fast: durable settings
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if own_services:
            svc.down(Settings(home=home), wipe=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
