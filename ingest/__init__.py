"""Ingest stage: verify Stripe webhooks and write them byte for byte to the event log."""

from ingest.app import create_app
from ingest.errors import IngestError, LogUnavailable
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer

__all__ = [
    "EventProducer",
    "IngestError",
    "LogUnavailable",
    "create_app",
    "event_headers",
    "routing_key",
]
