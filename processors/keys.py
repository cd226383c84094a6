"""`entitled keys`: the master key of the keyring (`entitled.keyring`).

`new-master` prints a fresh master key. `rotate-master` wraps every data key anew under the
first key of ENTITLED_MASTER_KEY; the event log is not touched. Rotation, step by step:
configure `ENTITLED_MASTER_KEY=<new>,<old>` everywhere (every process unwraps with either),
run `entitled keys rotate-master`, then configure `<new>` alone (docs/erasure.md).
"""

from __future__ import annotations

import asyncio

import click

from entitled.crypto import CryptoError, new_master_key
from entitled.keyring import Keyring


@click.group()
def keys() -> None:
    """The master key that wraps the data keys of the log."""


@keys.command("new-master")
def new_master() -> None:
    """Print a new master key (for ENTITLED_MASTER_KEY)."""
    click.echo(new_master_key())


@keys.command("rotate-master")
def rotate_master() -> None:
    """Wrap every data key under the first key of ENTITLED_MASTER_KEY."""
    from .cli import resolved_settings

    settings = resolved_settings()

    async def run() -> int:
        async with Keyring(settings) as keyring:
            return await keyring.rotate()

    try:
        done = asyncio.run(run())
    except CryptoError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"re-wrapped {done} data key(s) under the first master key")
