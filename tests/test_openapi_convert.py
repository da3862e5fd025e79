"""Conversion of OpenAPI documents to function specs: parity with Open WebUI, plus the improvements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executor.openapi.convert import convert_openapi_to_tool_payload, operations
from executor.openapi.document import SpecError, check, parse
from executor.openapi.refs import resolve, resolve_shallow

DATA = Path(__file__).parent / "data" / "openapi"
SPECS = sorted(p.name for p in DATA.glob("*.yaml"))


def _improved(spec: dict[str, Any]) -> tuple[set[str], set[tuple[str, str]]]:
    """Where we deliberately differ from Open WebUI, computed from the document itself.

    Returns the operationIds it cannot see (in ``$ref`` path items) and the (operationId, property) pairs
    it misses or types as "string": parameters given by ``$ref`` or with a ``$ref`` schema, and
    properties of request bodies composed with ``allOf``.
    """
    ops: set[str] = set()
    props: set[tuple[str, str]] = set()
    for raw_item in spec.get("paths", {}).values():
        item = resolve_shallow(raw_item, spec)
        for method, op in item.items():
            if method == "parameters" or not isinstance(op, dict) or not op.get("operationId"):
                continue
            if "$ref" in raw_item:
                ops.add(op["operationId"])
            for raw in [*item.get("parameters", []), *op.get("parameters", [])]:
                param = resolve_shallow(raw, spec)
                if "$ref" in raw or "$ref" in (param.get("schema") or {}):
                    props.add((op["operationId"], param["name"]))
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
            schema = resolve(body.get("schema") or {}, spec)
            for member in schema.get("allOf") or []:
                for name in member.get("properties") or {}:
                    props.add((op["operationId"], name))
                props.update((op["operationId"], r) for r in member.get("required") or [])
    return ops, props


@pytest.mark.parametrize("name", SPECS)
def test_parity_with_open_webui(name: str) -> None:
    spec = parse((DATA / name).read_text())
    check(spec)
    expected = json.loads((DATA / name.replace(".yaml", ".owui.json")).read_text())
    ours = convert_openapi_to_tool_payload(spec)
    extra_ops, improved = _improved(spec)

    ours = [f for f in ours if f["name"] not in extra_ops]
    assert [f["name"] for f in ours] == [f["name"] for f in expected]
    for mine, theirs in zip(ours, expected, strict=True):
        fn = theirs["name"]
        assert mine["type"] == "function"
        assert mine["description"] == theirs["description"], fn
        params, their_params = mine["parameters"], theirs["parameters"]
        assert params["type"] == "object"
        if their_params.get("type") == "array":
            # Open WebUI replaces the whole parameter schema with an array body; we keep it in "body".
            assert params["properties"]["body"]["type"] == "array", fn
            continue
        for prop, their_schema in their_params["properties"].items():
            assert prop in params["properties"], (fn, prop)
            if (fn, prop) not in improved:
                assert params["properties"][prop].get("type") == their_schema.get("type"), (fn, prop)
        extra_props = set(params["properties"]) - set(their_params["properties"])
        assert all((fn, p) in improved or p == "body" for p in extra_props), (fn, extra_props)
        extra_required = [r for r in params["required"] if r not in their_params["required"]]
        assert [r for r in params["required"] if r in their_params["required"]] == their_params["required"]
        assert all((fn, r) in improved for r in extra_required), (fn, extra_required)


def test_parity_checks_real_documents() -> None:
    sizes = {name: len(json.loads((DATA / name.replace(".yaml", ".owui.json")).read_text())) for name in SPECS}
    assert sizes["airflow-v1.yaml"] > 50 and sizes["airflow-v2.yaml"] > 100
    assert parse((DATA / "airflow-v2.yaml").read_text())["openapi"].startswith("3.1")
    assert parse((DATA / "airflow-v1.yaml").read_text())["openapi"].startswith("3.0")


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "servers": [{"url": "/api"}],
    "paths": {
        "/items/{item_id}": {
            "parameters": [{"$ref": "#/components/parameters/ItemId"}],
            "get": {
                "operationId": "getItem",
                "summary": "Get an item",
                "parameters": [
                    {"name": "fields", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string", "format": "uuid"}},
                    {"name": "sid", "in": "cookie", "schema": {"type": "string"}},
                    {
                        "name": "sort",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
                    },
                    {"name": "limit", "in": "query", "schema": {"$ref": "#/components/schemas/Limit"}},
                ],
            },
            "put": {
                "operationId": "putItem",
                "description": "Replace",
                "requestBody": {"$ref": "#/components/requestBodies/Item"},
            },
        },
        "/bulk": {
            "post": {
                "operationId": "bulk",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}
                        }
                    },
                },
            }
        },
        "/nodes": {
            "post": {
                "operationId": "addNode",
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}},
            },
            "get": {"summary": "no operationId: skipped"},
        },
    },
    "components": {
        "parameters": {"ItemId": {"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer"}}},
        "schemas": {
            "Limit": {"type": "integer", "minimum": 1, "default": 10, "description": "Page size"},
            "Item": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}},
                    "owner": {"type": "object", "properties": {"id": {"type": "integer"}}},
                },
            },
            "Tag": {"type": "object", "properties": {"label": {"type": "string"}}},
            "Node": {
                "type": "object",
                "properties": {
                    "value": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                },
            },
        },
        "requestBodies": {
            "Item": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
            }
        },
    },
}


def test_improvements() -> None:
    ops = {op.operation_id: op for op in operations(SPEC)}
    assert set(ops) == {"getItem", "putItem", "bulk", "addNode"}

    get = ops["getItem"].payload
    props = get["parameters"]["properties"]
    assert get["description"] == "Get an item"
    assert props["item_id"]["type"] == "integer"  # $ref parameter at path level
    assert get["parameters"]["required"] == ["item_id"]
    assert props["fields"] == {"type": "array", "description": "", "items": {"type": "string"}}
    assert props["X-Trace"]["format"] == "uuid"
    assert "sid" in props
    assert props["sort"]["description"] == ". Possible values: asc, desc"
    assert props["sort"]["default"] == "asc" and props["sort"]["enum"] == ["asc", "desc"]
    assert props["limit"] == {"type": "integer", "description": "Page size", "minimum": 1, "default": 10}
    assert {(p.name, p.location) for p in ops["getItem"].params} == {
        ("item_id", "path"),
        ("fields", "query"),
        ("X-Trace", "header"),
        ("sid", "cookie"),
        ("sort", "query"),
        ("limit", "query"),
    }

    put = ops["putItem"]
    assert put.body_mode == "properties" and put.body_properties == {"name", "tags", "owner"}
    pprops = put.payload["parameters"]["properties"]
    assert pprops["tags"]["items"] == {"type": "object", "properties": {"label": {"type": "string"}}}
    assert pprops["owner"]["properties"]["id"]["type"] == "integer"
    assert put.payload["parameters"]["required"] == ["item_id", "name"]

    bulk = ops["bulk"]
    assert bulk.body_mode == "value" and bulk.body_key == "body"
    assert bulk.payload["parameters"]["type"] == "object"
    assert bulk.payload["parameters"]["properties"]["body"]["items"]["required"] == ["name"]
    assert bulk.payload["parameters"]["required"] == ["body"]
    assert bulk.payload["description"] == "No description available."

    node = ops["addNode"].payload["parameters"]["properties"]
    # The cycle is cut where the schema recurs, not expanded forever.
    assert node["children"]["items"] == {}


def test_parse_and_check() -> None:
    assert parse('{"openapi": "3.0.0"}') == {"openapi": "3.0.0"}
    assert parse("openapi: 3.1.0\npaths:\n  /a:\n    get:\n      responses:\n        200: {}\n")["paths"]["/a"]["get"][
        "responses"
    ] == {"200": {}}
    for text, code in [
        ("{[", "not_json_or_yaml"),
        ("- a\n- b\n", "not_openapi"),
    ]:
        with pytest.raises(SpecError) as err:
            parse(text)
        assert err.value.code == code
    for doc, code in [
        ({"swagger": "2.0", "paths": {}}, "not_openapi_3"),
        ({"openapi": "3.0.0"}, "no_operations"),
        ({"openapi": "3.0.0", "paths": {"/a": {"get": {"summary": "x"}}}}, "no_operations"),
    ]:
        with pytest.raises(SpecError) as err:
            check(doc)
        assert err.value.code == code
    assert check(SPEC) == 4
