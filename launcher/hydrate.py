"""`entitled hydrate` with the worker's group membership (issue 24).

The hydrator lives in `ingest`, a stage that may not import `processors`; the membership
(a Postgres lock per copy, dead copies removed from the Kafka group at once) lives there.
The launcher, which may import every stage, hands one to the command: with a `DATABASE_URL`
the hydrators' partitions move as fast as the workers' when a copy dies; without one the
hydrator needs Kafka alone, as before.
"""

from __future__ import annotations

import click

from entitled.settings import Settings
from ingest.hydrate.cli import hydrate_with
from ingest.hydrate.hydrator import GroupWatch
from processors.cli import prepare
from processors.membership import WorkerIdTaken, claim_membership

__all__ = ["hydrate"]


async def _claim(settings: Settings, group: str) -> GroupWatch:
    await prepare(settings, patience_s=20.0)  # the topic and the members table (idempotent)
    try:
        return await claim_membership(settings, group)
    except WorkerIdTaken as exc:
        raise click.ClickException(str(exc)) from exc


hydrate = hydrate_with(_claim)
