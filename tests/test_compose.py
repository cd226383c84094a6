"""docker-compose.yml, read without a Docker engine: every process is there, each command
parses with the real `entitled` CLI, each variable it sets is one the settings read, secrets
are required (`${VAR:?}`), images are pinned, every published port binds to loopback, every
service has a health check, and monitoring sits behind a profile."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import click
import yaml

from entitled.settings import SECRET_VARIABLES, Settings
from launcher.cli import main
from tests.support.processes import REPO

COMPOSE = REPO / "docker-compose.yml"
PROCESSES = {"migrate", "ingest", "worker", "relay", "hydrate", "api"}
REQUIRED = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _entitled() -> dict[str, dict[str, Any]]:
    """The services that run the entitled image (the `x-entitled` anchor)."""
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith("entitled")}


class _Recording(Mapping[str, str]):
    """An empty environment that notes every variable `Settings.from_env` asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_variables() -> set[str]:
    env = _Recording()
    Settings.from_env(env)
    return env.asked


def test_settings_variables_are_recorded() -> None:
    known = settings_variables()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "ENTITLED_METRICS_HOST"} <= known
    assert {f"{name}_FILE" for name in SECRET_VARIABLES if name in known} <= known


def test_every_process_runs_and_its_command_parses() -> None:
    entitled = _entitled()
    assert set(entitled) == PROCESSES
    for name, service in entitled.items():
        args = [str(a) for a in service["command"]]
        group_ctx = main.make_context("entitled", list(args))
        command_name = args[0]
        command = main.get_command(group_ctx, command_name)
        assert command is not None, (name, command_name)
        try:
            ctx = command.make_context(command_name, args[1:], parent=group_ctx)
        except click.UsageError as exc:  # an option the command does not have, a bad value
            raise AssertionError(f"{name}: {args}: {exc.format_message()}") from None
        assert not ctx.args, (name, ctx.args)


def test_every_variable_set_is_one_the_settings_read() -> None:
    known = settings_variables()
    for name, service in _entitled().items():
        env = service["environment"]
        assert isinstance(env, dict), name
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{name} sets variables no setting reads: {unknown}"
        assert env["ENTITLED_METRICS_HOST"] == "0.0.0.0", name  # Prometheus is elsewhere


def test_required_secrets_have_no_default() -> None:
    text = COMPOSE.read_text()
    required = set(REQUIRED.findall(text))
    assert {
        "STRIPE_WEBHOOK_SECRET",
        "ENTITLED_API_TOKEN",
        "ENTITLED_ADMIN_TOKEN",
        "POSTGRES_PASSWORD",
    } <= required
    # no secret gets a default value (`${VAR:-...}` with something after the dash)
    for name in SECRET_VARIABLES:
        assert not re.search(rf"\$\{{{name}:-[^}}]+\}}", text), name
    assert "entitled:entitled@" not in text  # the old fixed database password


def test_images_are_pinned() -> None:
    for name, service in _services().items():
        image = str(service["image"])
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", (name, image)
        assert re.search(r"\d+\.\d+", tag), (name, image)  # a version, not `15` or `stable`


def test_published_ports_bind_to_loopback() -> None:
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 4


def test_every_service_has_a_health_check_or_is_a_one_shot() -> None:
    services = _services()
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, name
        if check.get("disable"):
            # a one-shot: its health is its exit status, which its dependents wait for
            assert service.get("restart") == "no", name
            waiting = [
                other
                for other in services.values()
                if other.get("depends_on", {}).get(name, {}).get("condition")
                == "service_completed_successfully"
            ]
            assert waiting, name
        else:
            assert check["test"], name


def test_monitoring_is_behind_a_profile() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in PROCESSES:
        assert "profiles" not in services[name], name
    # Prometheus scrapes each process's metrics port as the compose file publishes it
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    for name in PROCESSES - {"migrate"}:
        command = [str(a) for a in services[name]["command"]]
        port = command[command.index("--port" if "--port" in command else "--metrics-port") + 1]
        assert f"{name}:{port}" in targets, (name, targets)
