"""The OpenAPI document: valid OpenAPI 3.0, served, and in step with the app's routes."""

from __future__ import annotations

import json

import jsonschema_rs
from schemathesis.specs.openapi import definitions
from starlette.routing import Route

from api.app import OPENAPI, create_app
from entitled.settings import Settings
from ingest.refresh.app import RefreshEndpoint


def _doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(OPENAPI.read_text())
    return doc


def test_document_is_valid_openapi_30() -> None:
    doc = _doc()
    assert str(doc["openapi"]).startswith("3.0")
    definitions.OPENAPI_30_VALIDATOR.validate(doc)


def test_every_route_is_documented_and_back() -> None:
    settings = Settings(database_url="postgresql://unused/none")
    # as `entitled api` composes it: POST /v1/refresh is mounted from ingest by api.cli
    app = create_app(settings, extra_routes=[RefreshEndpoint(settings).route()])
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


def test_security_matches_each_routes_token_level() -> None:
    """Admin operations list only the admin token; reads either; and the refusals of the
    guards (421, 403, 415, refresh's 413 and 429) are documented where they can happen."""
    settings = Settings(database_url="postgresql://unused/none")
    app = create_app(settings, extra_routes=[RefreshEndpoint(settings).route()])
    levels = {("/v1/refresh", "post"): "admin"}  # refresh checks its token itself (ingest)
    for route in app.routes:
        level = getattr(getattr(route, "endpoint", None), "level", None)
        if isinstance(route, Route) and level is not None:
            for method in route.methods or ():
                if method != "HEAD":
                    levels[(route.path, method.lower())] = level
    paths = _doc()["paths"]
    assert isinstance(paths, dict)
    documented = {}
    for path, ops in paths.items():
        for method, op in ops.items():
            if "security" not in op:
                continue
            documented[(path, method)] = (
                "admin" if op["security"] == [{"adminToken": []}, {}] else "read"
            )
            if documented[(path, method)] == "read":
                assert op["security"] == [{"readToken": []}, {"adminToken": []}, {}]
            codes = set(op["responses"])
            assert {"401", "421"} <= codes, (path, method)
            assert ("403" in codes) == (documented[(path, method)] == "admin"), (path, method)
            assert ("415" in codes) == (method in ("put", "post", "delete")), (path, method)
    assert documented == levels
    assert {"413", "429"} <= set(paths["/v1/refresh"]["post"]["responses"])


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


def _nullable_to_type_lists(schema: object) -> object:
    """OpenAPI 3.0's `nullable` spelled as JSON Schema type lists (to validate with it)."""
    if isinstance(schema, dict):
        out = {k: _nullable_to_type_lists(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") is True:
            out["type"] = [schema["type"], "null"]
        return out
    if isinstance(schema, list):
        return [_nullable_to_type_lists(v) for v in schema]
    return schema


def test_change_page_schema_accepts_real_pages_only() -> None:
    from datetime import UTC, datetime

    from projections.feed import Change, Page

    components = _doc()["components"]
    assert isinstance(components, dict)
    schemas = _nullable_to_type_lists(components["schemas"])
    assert isinstance(schemas, dict)
    page_schema = {**schemas["ChangePage"], "definitions": schemas}
    text = json.dumps(page_schema).replace("#/components/schemas/", "#/definitions/")
    validator = jsonschema_rs.Draft4Validator(json.loads(text))
    change = Change(7, "cus_a", ["a"], ["a", "b"], [], [], "event", "evt_1", 1, 1,
                    datetime.now(UTC))  # fmt: skip
    replay = Change(8, "cus_b", [], [], ["9"], [], "replay", None, None, 2, datetime.now(UTC))
    good = Page([change, replay], 8).to_json()
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "next": "8"})
    assert not validator.is_valid({"changes": [{**good["changes"][0], "cause": "whim"}], "next": 8})
    no_diff = {**good["changes"][0], "groups": {"before": [], "after": []}}
    assert not validator.is_valid({"changes": [no_diff], "next": 8})
