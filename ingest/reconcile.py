"""`entitled reconcile`: write the Stripe events the log is missing (source=reconcile).

Pages through `/v1/events` from `since` (default: 30 days ago, as long as Stripe keeps
events), and writes each event whose id is not already in the log. There is no raw
webhook body for these, so the value is the event as the API returned it, re-serialised
compactly with its key order kept.

"Already in the log" is read from the `stripe-event-id` headers of the topic, from the
offsets at `since - 1 day` (Kafka timestamps are write times, which follow an event's
`created`; the day absorbs clock skew) to the end. Running it twice writes nothing the
second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from ingest.keys import created_at, event_headers, routing_key
from ingest.log_scan import header_values
from ingest.producer import EventProducer
from ingest.stripe_api import StripeApi

DEFAULT_WINDOW_S = 30 * 86400
_MARGIN_S = 86400


@dataclass(frozen=True)
class ReconcileResult:
    since: int
    listed: int
    already_present: int
    written: int


def parse_since(text: str) -> int:
    """Unix seconds from an epoch number or an ISO date / datetime (UTC unless it says)."""
    text = text.strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = datetime.combine(date.fromisoformat(text), datetime.min.time())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


async def logged_event_ids(settings: Settings, since: float) -> set[str]:
    """The `stripe-event-id` headers of every record written at or after `since`."""
    return await header_values(settings, since, "stripe-event-id")


async def reconcile(
    settings: Settings,
    *,
    since: float | None = None,
    rps: float | None = None,
    page_size: int = 100,
    api: StripeApi | None = None,
) -> ReconcileResult:
    """Write the events of `/v1/events` since `since` that the log lacks; see the module."""
    since_s = int(since if since is not None else time.time() - DEFAULT_WINDOW_S)
    assert settings.kafka_bootstrap_servers, "kafka_bootstrap_servers is not set"
    own_api = api is None
    if api is None:
        api = StripeApi.from_settings(settings, rps=rps)
    await ensure_event_topic(settings)
    producer = EventProducer(settings)
    try:
        present = await logged_event_ids(settings, since_s - _MARGIN_S)
        listed = 0
        missing: list[dict[str, Any]] = []
        seen: set[str] = set()
        async for page in api.pages("/v1/events", {"created": {"gte": since_s}}, limit=page_size):
            for event in page.data:
                listed += 1
                event_id = str(event.get("id"))
                if event_id in present or event_id in seen:
                    continue
                seen.add(event_id)
                missing.append(event)
        # Stripe lists newest first; write oldest first, as webhooks would have arrived.
        missing.reverse()
        missing.sort(key=lambda event: event.get("created") or 0)
        await producer.start()
        await producer.catch_up()  # forgets made until now: their customers' events shredded
        for event in missing:
            headers = event_headers(event, source="reconcile", received_at=time.time())
            await producer.publish(
                orjson.dumps(event),
                key=routing_key(event),
                headers=headers,
                created=created_at(event),
            )
        return ReconcileResult(
            since=since_s,
            listed=listed,
            already_present=listed - len(missing),
            written=len(missing),
        )
    finally:
        await producer.stop()
        if own_api:
            await api.close()
