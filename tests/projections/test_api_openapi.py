"""The OpenAPI document: valid OpenAPI 3.0, served, and in step with the app's routes."""

from __future__ import annotations

import json

import jsonschema_rs
from schemathesis.specs.openapi import definitions
from starlette.routing import Route

from entitled.settings import Settings
from projections.api import OPENAPI, create_app


def _doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(OPENAPI.read_text())
    return doc


def test_document_is_valid_openapi_30() -> None:
    doc = _doc()
    assert str(doc["openapi"]).startswith("3.0")
    definitions.OPENAPI_30_VALIDATOR.validate(doc)


def test_every_route_is_documented_and_back() -> None:
    app = create_app(Settings(database_url="postgresql://unused/none"))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(("/v1", "/healthz", "/readyz"))
        for method in route.methods or ()
        if method != "HEAD"
    }
    paths = _doc()["paths"]
    assert isinstance(paths, dict)
    documented = {
        (path, method) for path, ops in paths.items() for method in ops if path != "/metrics"
    }
    assert served == documented


def test_hit_schema_accepts_real_hits_only() -> None:
    components = _doc()["components"]
    assert isinstance(components, dict)
    hit = components["schemas"]["Hit"]
    # OpenAPI 3.0's `nullable` is not JSON Schema: spell it as a type list to validate.
    reason = dict(hit["properties"]["reason"])
    assert reason.pop("nullable") is True
    reason["type"] = [reason["type"], "null"]
    schema = {**hit, "properties": {**hit["properties"], "reason": reason}}
    validator = jsonschema_rs.Draft4Validator(schema)
    good = {"movie_id": "1", "title": "T", "groups": [], "available": False, "reason": None}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "reason": "gift"})
