"""The `entitled` command: one click group; each stage contributes its own commands.

Subcommand modules are imported lazily so that `entitled services status` does not pay for
importing Faust, and a broken optional stage cannot break the whole CLI.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click.Command
_COMMANDS: dict[str, str] = {
    "services": "entitled.services.cli:services",
    "dev": "entitled.dev:dev",
    "ingest": "ingest.cli:ingest",
    "backfill": "ingest.backfill_cli:backfill",
    "reconcile": "ingest.backfill_cli:reconcile",
    "worker": "processors.cli:worker",
    "replay": "processors.cli:replay",
    "deadletters": "processors.cli:deadletters",
    "status": "processors.cli:status",
    "migrate": "projections.cli:migrate",
    "api": "projections.cli:api",
    "catalog": "projections.cli:catalog",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="entitled")
def main() -> None:
    """entitled: a replayable copy of your Stripe data beside your own tables."""


if __name__ == "__main__":
    main()
