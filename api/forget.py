"""`DELETE /v1/customers/{id}`: forget a customer (admin token), as `entitled forget` does.

Their data keys are deleted from the keys topic (Kafka), then their rows, change rows and dead
letters in every version (`projections.erasure`); the answer says how much went. Forgetting
someone the projection never knew is not an error: their keys (if any) go all the same.
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ServiceUnavailable
from api.http import json_response
from api.params import customer_id
from entitled.crypto import CryptoError
from entitled.keyring import Keyring
from entitled.settings import Settings
from projections import erasure

__all__ = ["forget_customer"]


async def forget_customer(request: Request) -> Response:
    customer = customer_id(request.path_params["customer"])
    settings: Settings = request.app.state.settings
    if not settings.kafka_bootstrap_servers or not settings.database_url:
        raise ServiceUnavailable("forgetting needs Kafka and Postgres (KAFKA_BOOTSTRAP_SERVERS)")
    url = settings.database_url

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(url)

    by = request.headers.get("x-requested-by") or "api"
    try:
        async with Keyring(settings) as keyring:
            done = await erasure.forget(
                connect,
                customer,
                shred=keyring.forget,
                requested_by=by[:200],
            )
    except (CryptoError, KafkaError) as exc:
        raise ServiceUnavailable(f"cannot reach the keys: {exc}") from None
    return json_response(
        {
            "customer": done.customer,
            "forgotten": True,
            "subjects": list(done.subjects),
            "keys": done.keys,
            "rows": done.rows,
        }
    )
