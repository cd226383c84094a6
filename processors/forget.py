"""`entitled forget cus_...` (erase a customer) and `entitled forget --verify cus_...` (prove it).

Forgetting deletes the data keys of the customer and of every subject the projection links
to them (`projections.erasure.linked_subjects`), then deletes their rows in every version
and records the deleted key ids, which every fold transaction checks from then on
(`projections.erasure`: no process folds their events again, however late it reads the
tombstones). The log is not rewritten: their events stay, unreadable for ever (DESIGN.md,
"Forgetting a customer"; docs/erasure.md).

Verifying reads everything: every event of the log (opened where a key is left), the keys
topic as it is on the broker (a tombstoned key is on the disks until compaction removes it),
and every version's tables. It lists what is left and exits 1 if anything is.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.crypto import CryptoError
from entitled.kafka import client_options
from entitled.keyring import Keyring, key_records
from entitled.settings import Settings
from projections import erasure

__all__ = ["Verified", "forget", "forget_customer", "verify"]


async def forget_customer(
    settings: Settings, customer: str, *, requested_by: str
) -> erasure.Erased:
    """Forget `customer` (see the module doc)."""
    assert settings.database_url

    async def connect() -> psycopg.AsyncConnection[Any]:
        assert settings.database_url
        return await psycopg.AsyncConnection.connect(settings.database_url)

    async with Keyring(settings) as keyring:
        return await erasure.forget(
            connect,
            customer,
            shred=keyring.forget,
            requested_by=requested_by,
        )


@dataclass
class Verified:
    customer: str
    subjects: list[str]
    events: list[str] = field(default_factory=list)  # readable events naming them
    rows: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # key records still on the broker
    unsealed: int = 0  # records of the log written without encryption (before it existed)
    forgotten_events: int = 0  # their events that no longer open

    @property
    def clean(self) -> bool:
        return not (self.events or self.rows or self.keys)


async def verify(settings: Settings, customer: str) -> Verified:
    """What is left of `customer`: readable events, rows, keys."""
    assert settings.database_url and settings.kafka_bootstrap_servers
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        records = await erasure.erasures(conn, customer)
        subjects = sorted({s for r in records for s in r["subjects"]} | {customer})
        if not records:  # not forgotten (yet): what they are linked to today
            subjects = await erasure.linked_subjects(conn, customer)
        found = Verified(customer, subjects)
        found.rows = await erasure.leftovers(conn, customer, subjects)
    wanted = set(subjects)
    for record_key, present in (await key_records(settings)).items():
        subject = record_key.rpartition("/")[0]
        if subject in wanted and present:
            found.keys.append(f"{settings.data_keys_topic}: {record_key} ({present} record(s))")
    await _scan_log(settings, customer, wanted, found)
    return found


async def _scan_log(settings: Settings, customer: str, subjects: set[str], found: Verified) -> None:
    needle = customer.encode()
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    async with Keyring(settings) as keyring:
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(settings.topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()  # no public call forces it
                parts = consumer.partitions_for_topic(settings.topic) or set()
            tps = [TopicPartition(settings.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=5000)
                for tp, batch in batches.items():
                    for r in batch:
                        if r.offset >= ends[tp]:
                            continue
                        key = r.key.decode("utf-8", "replace") if r.key else ""
                        opened = await keyring.open_record(r)
                        found.unsealed += not opened.sealed
                        if opened.unread:  # forgotten, or an orphan (no key ever)
                            found.forgotten_events += key in subjects
                            continue
                        if key in subjects or needle in opened.value:
                            how = "unencrypted" if not opened.sealed else "readable"
                            found.events.append(
                                f"{settings.topic} {tp.partition}/{r.offset} key {key}: {how}"
                            )
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()


def render(found: Verified) -> str:
    lines = [f"{found.customer}: {len(found.subjects)} subject(s): {', '.join(found.subjects)}"]
    lines.append(f"events that no longer open: {found.forgotten_events}")
    for title, items in (
        ("readable events naming them", found.events),
        ("rows", found.rows),
        ("data keys on the broker", found.keys),
    ):
        lines.append(f"{title}: {len(items) or 'none'}")
        lines.extend(f"  {item}" for item in items)
    if found.unsealed:
        lines.append(
            f"note: {found.unsealed} record(s) of the log were written without encryption"
            " (before it existed): forgetting cannot reach what they hold"
        )
    lines.append("nothing left" if found.clean else "NOT erased: see above")
    return "\n".join(lines)


@click.command()
@click.argument("customer")
@click.option("--verify", "check", is_flag=True, help="List what is left; exit 1 if anything.")
@click.option(
    "--by",
    "requested_by",
    default=None,
    help="Who asked (kept in the erasure record; default: the OS user).",
)
def forget(customer: str, check: bool, requested_by: str | None) -> None:
    """Forget CUSTOMER: delete their data keys (their events stay, unreadable), their rows,
    change rows and dead letters in every version; publish a `forget` change."""
    from .cli import resolved_settings

    settings = resolved_settings()
    if not customer.strip() or "/" in customer:
        raise click.UsageError(f"not a customer id: {customer!r}")
    try:
        if check:
            found = asyncio.run(verify(settings, customer))
            click.echo(render(found))
            sys.exit(0 if found.clean else 1)
        done = asyncio.run(
            forget_customer(settings, customer, requested_by=requested_by or getpass.getuser())
        )
    except CryptoError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"forgot {done.customer}: {done.keys} data key(s) of {len(done.subjects)} subject(s)"
        f" deleted, {done.rows} row(s) in {done.versions} version(s);"
        f" check with `entitled forget --verify {done.customer}`"
    )
