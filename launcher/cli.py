"""The `entitled` command: one click group; each stage contributes its own commands.

Subcommand modules are imported lazily so that `entitled services status` does not pay for
importing Faust, and a broken optional stage cannot break the whole CLI.

Stages know nothing of the local service launcher: they read `KAFKA_BOOTSTRAP_SERVERS` and
`DATABASE_URL` from their `Settings`. When one of them is not set, this group starts the
local service (`entitled services up`) and puts its address into the environment just
before the stage command runs (not for `--help`).
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
    "hydrate": ("ingest.hydrate.cli:hydrate", frozenset({KAFKA})),
    "refresh": ("ingest.hydrate.cli:refresh", frozenset({KAFKA})),
    "worker": ("processors.cli:worker", frozenset({KAFKA, POSTGRES})),
    "relay": ("processors.cli:relay", frozenset({KAFKA, POSTGRES})),
    "replay": ("processors.cli:replay", frozenset({KAFKA, POSTGRES})),
    "deadletters": ("processors.cli:deadletters", frozenset({POSTGRES})),
    "status": ("processors.cli:status", frozenset({KAFKA, POSTGRES})),
    "migrate": ("projections.cli:migrate", frozenset({POSTGRES})),
    "api": ("api.cli:api", frozenset({POSTGRES})),
    "catalog": ("projections.cli:catalog", frozenset({POSTGRES})),
}


def resolve_services(needs: frozenset[str]) -> None:
    """Start the local services in `needs` that the environment does not name, and name them
    in the environment, where the stage's `Settings.from_env()` (and its children) find them."""
    from launcher import services

    settings = Settings.from_env()
    try:
        resolved = services.resolve(
            settings, need_kafka=KAFKA in needs, need_postgres=POSTGRES in needs
        )
    except services.ServicesError as exc:
        raise click.ClickException(str(exc)) from exc
    if resolved.kafka_bootstrap_servers:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = resolved.kafka_bootstrap_servers
    if resolved.database_url:
        os.environ["DATABASE_URL"] = resolved.database_url


def with_services(command: click.Command, needs: frozenset[str]) -> click.Command:
    """A copy of `command` whose leaf callbacks first resolve `needs` (see module doc).

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
        def run(*args: Any, **kwargs: Any) -> Any:
            resolve_services(needs)
            return callback(*args, **kwargs)

        wrapped.callback = run
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
def main() -> None:
    """entitled: a replayable copy of your Stripe data beside your own tables."""


if __name__ == "__main__":
    main()
