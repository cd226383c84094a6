"""The `entitled ingest` command: refuses to start without a secret; serves when given one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
from click.testing import CliRunner

from entitled.settings import Settings
from launcher.cli import main
from launcher.stripe import events as se
from tests.support.kafka import read_topic
from tests.support.polling import async_wait_until
from tests.support.ports import free_port
from tests.support.processes import Proc, environment


def test_ingest_refuses_to_start_without_a_secret() -> None:
    env = {"STRIPE_WEBHOOK_SECRET": "", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    result = CliRunner().invoke(main, ["ingest", "--port", "0"], env=env)
    assert result.exit_code == 2
    assert "STRIPE_WEBHOOK_SECRET" in result.output
    assert "Traceback" not in result.output


async def test_ingest_command_serves_and_takes_a_body_at_the_limit(
    settings: Settings, tmp_path: Path
) -> None:
    # A topic the command creates itself, so its max.message.bytes fits the body limit.
    own = replace(settings, topic=f"{settings.topic}.cli")
    port = free_port()
    proc = Proc(["ingest", "--port", str(port)], environment(own), tmp_path / "ingest.log")
    proc.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                assert proc.alive, proc.tail()
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await async_wait_until(ready, 60, "entitled ingest to be ready")
            product = se.product(metadata={"pad": ""})
            evt = se.event("product.updated", product)
            padding = own.max_body_bytes - len(se.encode(evt))
            evt["data"]["object"]["metadata"]["pad"] = "x" * padding
            body = se.encode(evt)
            assert len(body) == own.max_body_bytes
            headers = {"Stripe-Signature": se.sign_header(body, own.webhook_secrets[0])}
            r = await client.post("/webhooks/stripe", content=body, headers=headers)
            assert r.status_code == 200, r.text
    finally:
        proc.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, hence -15.
    assert proc.popen is not None and proc.popen.returncode in (0, -15), proc.tail()
    assert "Application shutdown complete" in proc.tail()
    records = await read_topic(own)
    assert [r.value for r in records] == [body]
