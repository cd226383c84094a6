"""deploy/: every metric the Grafana dashboard and the Prometheus alert rules name exists on
the real processes' /metrics (worker, relay, hydrator, ingest, read API), served on
ENTITLED_METRICS_HOST; the alert rules pass Prometheus's own `promtool test rules`
(deploy/prometheus/alerts_test.yml: a process gone fires, not only one reporting trouble)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.polling import get, wait_until
from tests.support.ports import free_port
from tests.support.processes import REPO, Procs
from tests.support.system import start_system

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "entitled.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMTOOL = Path(sys.prefix) / "bin" / "promtool"  # built by scripts/bootstrap
# Not 127.0.0.1: the worker's, relay's and hydrator's /metrics must listen where
# ENTITLED_METRICS_HOST says (0.0.0.0 in containers); 127.0.0.2 is loopback too.
METRICS_HOST = "127.0.0.2"

_NAME = re.compile(r"\bentitled_[a-z0-9_]+")
# What a family declared by `# TYPE name kind` exposes (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
}


def _dashboard_exprs() -> Iterator[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from walk(p.get("panels", []))

    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"]]


def named_metrics() -> set[str]:
    exprs = [*_dashboard_exprs(), *(r["expr"] for r in _alert_rules())]
    return {n for e in exprs for n in _NAME.findall(e)}


def exposed(text: str) -> set[str]:
    """Every series name a scrape exposes, or would once a labelled family has samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "counter":  # declared under its `_total` name while it has no sample
                family = family.removesuffix("_total")
            names.update(family + s for s in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_exposed_names_handle_histogram_and_counter_suffixes() -> None:
    text = (
        "# TYPE entitled_x_seconds histogram\n"
        "# TYPE entitled_x_events counter\n"
        '# TYPE entitled_x_lag gauge\nentitled_x_lag{partition="0"} 1.0\n'
    )
    names = exposed(text)
    assert {
        "entitled_x_seconds_bucket",
        "entitled_x_seconds_sum",
        "entitled_x_events_total",
    } <= names
    assert "entitled_x_lag" in names
    assert "entitled_x_events" not in names  # a counter's samples end in _total


def test_the_alert_rules_cover_what_operators_must_hear_about() -> None:
    rules = {r["alert"]: r["expr"] for r in _alert_rules()}
    assert "entitled_worker_lag_seconds" in rules["EntitledWorkerLag"]
    assert rules["EntitledWorkerLag"].endswith("> 60")
    assert rules["EntitledRelayPending"].endswith("> 1000")
    assert "entitled_worker_dead_letters" in rules["EntitledDeadLetters"]
    assert rules["EntitledDeadLetters"].endswith("> 0")
    assert "entitled_worker_stalled" in rules["EntitledWorkerStalled"]
    assert "entitled_worker_regroup_queue_age_seconds" in rules["EntitledRegroupQueueStuck"]
    # a process that is gone reports nothing: presence is asked of `up`, per job
    for alert, job in (
        ("EntitledWorkerDown", "entitled-worker"),
        ("EntitledRelayDown", "entitled-relay"),
        ("EntitledIngestDown", "entitled-ingest"),
        ("EntitledApiDown", "entitled-api"),
        ("EntitledHydratorDown", "entitled-hydrator"),
    ):
        assert rules[alert] == f'absent(up{{job="{job}"}} == 1)', alert
    assert "or vector(0)" in rules["EntitledRelayNoLeader"]


def test_alert_rules_pass_promtool() -> None:
    """Prometheus's own evaluation of deploy/prometheus/alerts_test.yml (worker down or gone,
    one of two workers down, no relay leader, relays gone, a healthy system)."""
    assert PROMTOOL.is_file(), f"{PROMTOOL} is missing: run scripts/bootstrap (make venv)"
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(ALERTS_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ALERTS_TEST.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_every_metric_the_dashboard_and_alerts_name_exists(procs: Procs) -> None:
    worker_port, relay_port, hydrator_port = free_port(), free_port(), free_port()
    on_host = {"ENTITLED_METRICS_HOST": METRICS_HOST}
    system = start_system(
        procs, catalog=False, ENTITLED_WORKER_METRICS_PORT=str(worker_port), **on_host
    )
    procs.spawn("relay", "--metrics-port", str(relay_port), **on_host)
    procs.spawn("hydrate", "--metrics-port", str(hydrator_port), STRIPE_API_KEY="", **on_host)
    sources = {
        "entitled_worker_": f"http://{METRICS_HOST}:{worker_port}/metrics",
        "entitled_relay_": f"http://{METRICS_HOST}:{relay_port}/metrics",
        "entitled_hydrator_": f"http://{METRICS_HOST}:{hydrator_port}/metrics",
        "entitled_ingest_": f"{system.ingest_url}/metrics",
        "entitled_api_": f"{system.api_url}/metrics",
    }

    def scrape(url: str) -> str | None:
        try:
            r = get(url, timeout=3)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    texts = {
        prefix: wait_until(lambda u=url: scrape(u), 90, url, procs)
        for prefix, url in sources.items()
    }
    names = named_metrics()
    assert len(names) >= 20, names  # the files were read, not skipped
    unknown = sorted(n for n in names if not n.startswith(tuple(sources)))
    assert unknown == [], f"named metrics of no scraped process: {unknown}"
    missing = sorted(
        n
        for n in names
        for prefix, text in texts.items()
        if n.startswith(prefix) and n not in exposed(text)
    )
    assert missing == [], f"named in deploy/ but not exposed: {missing}"
    # ...and only there: the setting is what decides (not a hard-coded 127.0.0.1)
    for port in (worker_port, relay_port, hydrator_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port


def test_deploy_files_are_where_the_docs_say() -> None:
    page = (REPO / "docs" / "metrics.md").read_text()
    for path in (DASHBOARD, ALERTS):
        assert Path(path).is_file()
        assert str(path.relative_to(REPO)) in page
