"""`entitled dev`: the whole system on this machine, with demo data, in one command.

Local Kafka and PostgreSQL (unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are given), the
topic and the schema, then `entitled ingest`, `entitled worker` and `entitled api` as child
processes; the demo catalogue (into an empty catalogue only) and a few signed demo events
sent through the real webhook endpoint. Ctrl-C (or SIGTERM) stops the children and the
services this run started; their data stays, so the next run resumes where this one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from types import FrameType

import click
import httpx
import psycopg

from entitled.settings import Settings
from entitled.topics import TopicError
from launcher import demo
from launcher import services as svc
from launcher._children import Child, ChildDied, Children, Follower, echo
from launcher._dev_steps import (
    ADMIN_TOKEN_FILE,
    PIDS_FILE,
    READ_TOKEN_FILE,
    SECRET_FILE,
    DevError,
    Generated,
    child_environment,
    master_key,
    port_for,
    prepare,
    running_services,
    say,
    single_instance,
    start_replicas,
    start_services,
    wait_folded,
    wait_ready,
    with_secrets,
)
from launcher.services.cli import replicas_option, secure_option

STOP_TIMEOUT_S = 20.0


def _summary(
    settings: Settings, generated: Generated, ingest_url: str, api_url: str, stops: str
) -> None:
    """What to open and use; only secrets this run generated are shown (see `Generated`)."""
    hostport = ingest_url.removeprefix("http://")
    home = settings.home
    # The page takes the read token from the fragment, which no server or log ever sees.
    page = f"{api_url}/?customer=cus_demo_alice"
    if generated.api_token:
        page += f"#token={generated.api_token}"
    lines = [
        f"  page       {page}",
        f"  search     {api_url}/v1/search?customer=cus_demo_alice&q=harrison+ford",
        f"  webhook    {ingest_url}/webhooks/stripe",
        "  secret     "
        + (
            f"{generated.webhook_secret}  (generated, kept in {home / SECRET_FILE})"
            if generated.webhook_secret
            else "from STRIPE_WEBHOOK_SECRET"
        ),
        "  read token "
        + (
            f"{generated.api_token}  (generated, kept in {home / READ_TOKEN_FILE})"
            if generated.api_token
            else "from ENTITLED_API_TOKEN"
        ),
        "  admin      "
        + (
            f"{generated.admin_token}  (generated, kept in {home / ADMIN_TOKEN_FILE})"
            if generated.admin_token
            else "from ENTITLED_ADMIN_TOKEN"
        ),
        "  (send Authorization: Bearer <token>; the admin token for catalogue writes, refresh,",
        "   drift and the customer list)",
        f"  logs       {settings.home / 'logs'} (ingest.log, worker.log, api.log)",
        "  customers  " + ", ".join(demo.CUSTOMERS),
        "Forward your Stripe test-mode events with the Stripe CLI:",
        f"  stripe listen --forward-to {hostport}/webhooks/stripe",
        "  then restart with STRIPE_WEBHOOK_SECRET set to the whsec_... it prints",
        f"Ctrl-C stops {stops}.",
    ]
    echo("\n".join(lines))


def _supervise(children: Children, follower: Follower) -> None:
    while True:
        children.check()
        follower.pump()
        time.sleep(0.2)


# -- the command -----------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # One interrupt only: a second Ctrl-C must not break off the shutdown the first began.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _still_stopping)
    raise KeyboardInterrupt


def _still_stopping(signum: int, frame: FrameType | None) -> None:
    say("still stopping, please wait")


@dataclasses.dataclass(frozen=True)
class Options:
    ingest_port: int
    api_port: int
    follow: bool
    keep_services: bool
    wipe: bool
    timeout_s: float
    replicas: int = 0
    secure: bool = False
    api_workers: int | None = None  # None: ENTITLED_API_WORKERS, else 1


def _workers(n: int | None) -> list[str]:
    """`entitled api`'s `--workers`, when given (else it reads ENTITLED_API_WORKERS)."""
    return [] if n is None else ["--workers", str(n)]


def _start_children(
    settings: Settings,
    ingest_port: int,
    api_port: int,
    children: Children,
    follower: Follower,
    api_workers: int | None = None,
) -> Path:
    """Start ingest, worker, relay, hydrate and api; return the folder of their logs."""
    env = child_environment(settings)
    logs = settings.home / "logs"
    say(f"logs of the children in {logs}")
    say(
        "hydrator: "
        + (
            f"reads the Stripe API at {settings.stripe_api_base or 'api.stripe.com'}"
            if settings.stripe_api_key
            else "idle, no STRIPE_API_KEY (events needing completion are counted)"
        )
    )
    for name, args in (
        ("ingest", ["ingest", "--port", str(ingest_port)]),
        ("worker", ["worker"]),
        ("relay", ["relay"]),
        # idle without STRIPE_API_KEY: it counts what it would fetch and says so
        ("hydrate", ["hydrate"]),
        ("api", ["api", "--port", str(api_port), *_workers(api_workers)]),
    ):
        child = Child(name, args, logs / f"{name}.log")
        follower.add(child)
        # In the home: Faust keeps its data directory in the working directory.
        children.start(child, env, settings.home)
    return logs


def run(settings: Settings, opts: Options) -> int:
    """Run until interrupted; 0 after Ctrl-C/SIGTERM, 1 when something failed."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    if opts.ingest_port and opts.ingest_port == opts.api_port:
        raise DevError("--ingest-port and --api-port must differ")
    ingest_port = port_for(opts.ingest_port, "ingest", "--ingest-port")
    api_port = port_for(opts.api_port, "api", "--api-port")
    if opts.wipe:
        svc.down(settings, wipe=True)
        say(f"wiped the local services' data in {settings.services_dir}")
    wanted = set()
    if not settings.kafka_bootstrap_servers:
        wanted.add("kafka")
    if not settings.database_url:
        wanted.add("postgres")
    # Services that were up before this run (`entitled services up`) are left up at the end.
    ours = wanted - running_services(settings) if wanted else set()
    settings, generated = with_secrets(settings)
    settings = dataclasses.replace(settings, master_key=master_key(settings))
    children = Children()
    follower = Follower(opts.follow)
    pids = settings.home / PIDS_FILE
    code = 1
    try:
        settings = start_services(settings, secure=opts.secure)
        if opts.replicas:
            settings = start_replicas(settings, opts.replicas, "postgres" in wanted)
        active, loaded = asyncio.run(prepare(settings))
        say(
            f"topic {settings.topic}; schema {active}; demo catalogue: "
            + (f"{loaded} movies loaded" if loaded else "kept (the catalogue has movies)")
        )
        logs = _start_children(
            settings, ingest_port, api_port, children, follower, opts.api_workers
        )
        pids.write_text(json.dumps({"dev": os.getpid(), "children": children.pids()}) + "\n")
        ingest_url, api_url = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{api_port}"
        wait_ready({"ingest": ingest_url, "api": api_url}, children, follower, opts.timeout_s)
        sent = demo.send(f"{ingest_url}/webhooks/stripe", settings.webhook_secrets[0])
        say(f"sent {sent} demo events through the webhook endpoint")
        if not wait_folded(api_url, settings.api_token, children, follower, opts.timeout_s):
            say(f"the worker has not folded the demo events yet: see {logs / 'worker.log'}")
        say(f"ready in {time.monotonic() - started:.1f} s")
        stops = "ingest, worker and api" + (
            "; the services stay up"
            if opts.keep_services or not ours
            else " and the local " + " and ".join(sorted(ours))
        )
        _summary(settings, generated, ingest_url, api_url, stops)
        _supervise(children, follower)
    except KeyboardInterrupt:
        echo()
        say("stopping")
        code = 0
    except ChildDied as exc:
        say(f"{exc}; the last lines of {exc.child.log}:\n{exc.child.tail()}")
    except (DevError, svc.ServicesError, TopicError, demo.DemoRefused) as exc:
        say(str(exc))
    except httpx.HTTPError as exc:
        say(f"sending the demo events failed: {exc!r}")
    except psycopg.OperationalError as exc:
        say(f"cannot reach PostgreSQL: {exc}")
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _still_stopping)
        try:
            code = _shutdown(settings, children, ours, opts.keep_services, code)
        finally:
            pids.unlink(missing_ok=True)
    return code


def _shutdown(settings: Settings, children: Children, ours: set[str], keep: bool, code: int) -> int:
    try:
        children.stop(STOP_TIMEOUT_S)
        if children.all:
            say("stopped ingest, worker and api")
    finally:  # whatever went wrong with the children, the services this run started stop
        if not keep and ours:
            code = _stop_services(settings, ours, code)
    return code


def _stop_services(settings: Settings, ours: set[str], code: int) -> int:
    report = svc.status(settings)  # a service that never got created has nothing to stop
    stop = {"kafka": svc.stop_kafka, "postgres": svc.stop_postgres}
    if "postgres" in ours:  # its replicas go with it (they are started by `--replicas` only)
        for replica in report["replicas"]:
            with contextlib.suppress(svc.ServicesError, OSError):
                svc.stop_replica(settings, replica["index"])
    for name in sorted(ours):
        if report[name] is None:
            continue
        try:
            stop[name](settings)
        except (svc.ServicesError, OSError) as exc:  # the other one is stopped all the same
            say(f"stopping the local {name} failed: {exc}")
            code = 1
    say(f"stopped the local {' and '.join(sorted(ours))} (data kept in {settings.services_dir})")
    return code


@click.command()
@click.option("--ingest-port", default=8000, show_default=True, help="Webhook port (0: any free).")
@click.option("--api-port", default=8001, show_default=True, help="Page/API port (0: any free).")
@click.option("--follow", is_flag=True, help="Also print the children's logs, prefixed.")
@click.option("--keep-services", is_flag=True, help="Leave Kafka and PostgreSQL running at exit.")
@click.option("--wipe", is_flag=True, help="Delete the local services' data before starting.")
@click.option(
    "--timeout", "timeout_s", default=120.0, show_default=True, help="Seconds to wait for startup."
)
@click.option(
    "--api-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes of the api on its port [default: ENTITLED_API_WORKERS, else 1].",
)
@replicas_option
@secure_option
def dev(
    ingest_port: int,
    api_port: int,
    follow: bool,
    keep_services: bool,
    wipe: bool,
    timeout_s: float,
    api_workers: int | None,
    replicas: int,
    secure: bool,
) -> None:
    """Run ingest, worker and api locally with demo data, until Ctrl-C."""
    settings = Settings.from_env()
    opts = Options(
        ingest_port,
        api_port,
        follow,
        keep_services,
        wipe,
        timeout_s,
        replicas,
        secure,
        api_workers,
    )
    try:
        with single_instance(settings.home):
            code = run(settings, opts)
    except (DevError, svc.ServicesError) as exc:
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(code)
