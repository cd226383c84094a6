"""The `entitled` command: one click group; each stage contributes its own commands.

Subcommand modules are imported lazily so that `entitled services status` does not pay for
importing Faust, and a broken optional stage cannot break the whole CLI.

Stages know nothing of the local service launcher: they read `KAFKA_BOOTSTRAP_SERVERS` and
`DATABASE_URL` from their `Settings`. When one a stage command needs is not set, the command
exits 2 naming it, unless given `--local-services` (`entitled --local-services CMD` or
`entitled CMD --local-services`): then this group starts the local service (`entitled
services up`) and puts its address into the environment just before the stage command runs
(not for `--help`). Before a command that uses Kafka runs, its security settings are checked
and one connection is made, so a wrong password or CA stops it at once.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from typing import Any

import click

from entitled.settings import Settings, SettingsError

KAFKA, POSTGRES = "kafka", "postgres"

# command name -> ("module:attribute" of a click.Command, the services it needs)
_COMMANDS: dict[str, tuple[str, frozenset[str]]] = {
    "services": ("launcher.services.cli:services", frozenset()),
    "dev": ("launcher.dev:dev", frozenset()),  # starts and stops its own services
    "ingest": ("ingest.cli:ingest", frozenset({KAFKA})),
    "backfill": ("ingest.backfill.cli:backfill", frozenset({KAFKA})),
    "reconcile": ("ingest.backfill.cli:reconcile", frozenset({KAFKA})),
    "hydrate": ("launcher.hydrate:hydrate", frozenset({KAFKA})),  # + membership
    "refresh": ("ingest.hydrate.cli:refresh", frozenset({KAFKA})),
    "worker": ("processors.cli:worker", frozenset({KAFKA, POSTGRES})),
    "relay": ("processors.cli:relay", frozenset({KAFKA, POSTGRES})),
    "replay": ("processors.cli:replay", frozenset({KAFKA, POSTGRES})),
    "deadletters": ("processors.cli:deadletters", frozenset({POSTGRES})),
    "status": ("processors.cli:status", frozenset({KAFKA, POSTGRES})),
    "forget": ("processors.forget:forget", frozenset({KAFKA, POSTGRES})),
    "keys": ("processors.keys:keys", frozenset({KAFKA})),
    "migrate": ("projections.cli:migrate", frozenset({POSTGRES})),
    "api": ("api.cli:api", frozenset({POSTGRES})),
    "catalog": ("projections.cli:catalog", frozenset({POSTGRES})),
    "explain": ("projections.explain_cli:explain", frozenset({POSTGRES})),
}


_VARIABLES = {KAFKA: "KAFKA_BOOTSTRAP_SERVERS", POSTGRES: "DATABASE_URL"}
_LOCAL_HELP = (
    "Start a throwaway local Kafka/PostgreSQL (`entitled services up`) for whichever of "
    "KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL is not set. Development only."
)


def resolve_services(needs: frozenset[str], *, local: bool = False) -> None:
    """Check that the environment names the services in `needs`, and that Kafka accepts our
    credentials; with `local`, start the ones it does not name and name them in the
    environment, where the stage's `Settings.from_env()` (and its children) find them.

    Without `local` a missing address is an error: an ingest that quietly wrote to a
    throwaway broker would answer Stripe 200 for events lost with it.
    """
    settings = Settings.from_env()
    missing = [
        _VARIABLES[need]
        for need in sorted(needs)
        if not (settings.kafka_bootstrap_servers if need == KAFKA else settings.database_url)
    ]
    if missing and not local:
        what = {"KAFKA_BOOTSTRAP_SERVERS": "your Kafka brokers", "DATABASE_URL": "your Postgres"}
        raise ConfigurationRefused(
            "; ".join(f"{name} is not set (it names {what[name]})" for name in missing)
            + ". Set it, or pass --local-services to start throwaway local services "
            "(development only)."
        )
    if missing:
        from launcher import services

        try:
            settings = services.resolve(
                settings, need_kafka=KAFKA in needs, need_postgres=POSTGRES in needs
            )
        except services.ServicesError as exc:
            raise click.ClickException(str(exc)) from exc
        if settings.kafka_bootstrap_servers:
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
            os.environ.update(settings.kafka_env())
        if settings.database_url:
            os.environ["DATABASE_URL"] = settings.database_url
    if KAFKA in needs:
        check_kafka(settings)


def check_kafka(settings: Settings) -> None:
    """Refuse Kafka security settings that contradict each other (exit 2), and a broker that
    refuses our credentials or certificate (exit 1), within seconds: aiokafka would retry
    either for ever."""
    from entitled import kafka
    from launcher.services._process import run_async

    try:
        run_async(lambda: kafka.probe(settings))
    except kafka.KafkaConfigError as exc:
        raise ConfigurationRefused(str(exc)) from None
    except kafka.KafkaAccessError as exc:
        raise click.ClickException(str(exc)) from None


def with_services(command: click.Command, needs: frozenset[str]) -> click.Command:
    """A copy of `command` whose leaf callbacks first resolve `needs` (see module doc), and
    which take `--local-services`.

    Leaves, not the group: a group's callback runs before its subcommand parses `--help`.
    """
    if not needs:
        return command
    wrapped = copy.copy(command)
    if isinstance(command, click.Group):
        assert isinstance(wrapped, click.Group)
        wrapped.commands = {n: with_services(c, needs) for n, c in command.commands.items()}
    elif command.callback is not None:
        callback = command.callback

        @functools.wraps(callback)
        def run(*args: Any, local_services: bool = False, **kwargs: Any) -> Any:
            root = click.get_current_context().find_root()
            local = local_services or bool(root.params.get("local_services"))
            resolve_services(needs, local=local)
            return callback(*args, **kwargs)

        wrapped.callback = run
        wrapped.params = [
            *command.params,
            click.Option(["--local-services"], is_flag=True, help=_LOCAL_HELP),
        ]
    return wrapped


class ConfigurationRefused(click.ClickException):
    """A setting the process cannot start with: exit 2 (a usage error), the message only."""

    exit_code = 2


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise ConfigurationRefused(str(exc)) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        target, needs = entry
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return with_services(command, needs)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="entitled")
@click.option("--local-services", is_flag=True, help=_LOCAL_HELP)
def main(local_services: bool) -> None:
    """entitled: a replayable copy of your Stripe data beside your own tables."""


if __name__ == "__main__":
    main()
