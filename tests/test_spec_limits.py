"""Hostile specs are refused before they are expanded: YAML aliases, node budgets, depth, $ref blow-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executor.openapi.convert import operations
from executor.openapi.document import MAX_SPEC_DEPTH, SpecError, measure, parse
from executor.openapi.load import PreparedSpec, prepare, prepare_async
from executor.openapi.refs import MAX_EXPANSION_DEPTH, expansion_budget, resolve

DATA = Path(__file__).parent / "data" / "openapi"
SETTING = "EXECUTOR_TOOL_SERVER_MAX_SPEC_NODES"


def _billion_laughs(depth: int) -> str:
    # Each level is a list of two aliases of the level before: 2**depth strings once expanded.
    lines = ["openapi: 3.0.0", 'l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def _ref_doubling(levels: int) -> dict[str, Any]:
    # S{n} refers twice to S{n-1}: expanding the last one by copy would make 2**levels objects.
    schemas: dict[str, Any] = {"S0": {"type": "string"}}
    for i in range(1, levels):
        ref = {"$ref": f"#/components/schemas/S{i - 1}"}
        schemas[f"S{i}"] = {"type": "object", "properties": {"a": ref, "b": dict(ref)}}
    body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/S{levels - 1}"}}}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "bomb", "version": "1"},
        "paths": {"/x": {"post": {"operationId": "boom", "requestBody": body}}},
        "components": {"schemas": schemas},
    }


def _raises(code: str, call: Any, *args: Any, **kwargs: Any) -> SpecError:
    with pytest.raises(SpecError) as err:
        call(*args, **kwargs)
    assert err.value.code == code, err.value.message
    return err.value


@pytest.mark.parametrize("depth", [18, 30])
def test_yaml_aliases_refused(depth: int) -> None:
    error = _raises("yaml_aliases", parse, _billion_laughs(depth))
    assert "alias" in error.message and "*l0" in error.message


def test_yaml_aliases_refused_by_prepare() -> None:
    _raises("yaml_aliases", prepare, _billion_laughs(30))


def test_benign_yaml_still_parses() -> None:
    text = (
        "openapi: 3.0.0\n"
        "info: {title: t, version: '1'}\n"
        "paths:\n"
        "  /a:\n"
        "    get:\n"
        "      operationId: getA\n"
        "      responses:\n"
        "        200: &ok {description: fine}\n"  # an anchor nobody refers to is harmless
        "      x-date: 2024-01-02\n"
    )
    doc = parse(text)
    assert doc["paths"]["/a"]["get"]["responses"] == {"200": {"description": "fine"}}
    assert doc["paths"]["/a"]["get"]["x-date"] == "2024-01-02"
    assert [op.operation_id for op in prepare(text).ops] == ["getA"]


def test_node_budget_yaml() -> None:
    text = "openapi: 3.0.0\nitems:\n" + "- 1\n" * 2_000
    error = _raises("spec_too_complex", parse, text, max_nodes=500)
    assert "500" in error.message and SETTING in error.message
    assert len(parse(text, max_nodes=3_000)["items"]) == 2_000


def test_node_budget_json() -> None:
    text = json.dumps({"openapi": "3.0.0", "items": [1] * 2_000})
    error = _raises("spec_too_complex", parse, text, max_nodes=500)
    assert "500" in error.message and SETTING in error.message


def test_json_and_yaml_count_the_same_nodes() -> None:
    doc = {"openapi": "3.0.0", "paths": {"/a": {"get": {"operationId": "a", "tags": ["x", "y"]}}}}
    count = measure(doc)
    assert count == 9  # every value, keys not counted: the root, "3.0.0", paths, /a, get, "a", tags, x, y
    yaml_text = "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      operationId: a\n      tags: [x, y]\n"
    for text in (json.dumps(doc), yaml_text):
        assert parse(text, max_nodes=count) == doc
        _raises("spec_too_complex", parse, text, max_nodes=count - 1)


def test_deep_json_refused() -> None:
    # Deep enough to hit the interpreter's recursion limit inside json.loads.
    text = '{"a": ' * 10_000 + "1" + "}" * 10_000
    error = _raises("spec_too_deep", parse, text)
    assert str(MAX_SPEC_DEPTH) in error.message


def test_json_deeper_than_the_cap_refused() -> None:
    # Loads without a RecursionError, but is still past MAX_SPEC_DEPTH.
    text = '{"a": ' * (MAX_SPEC_DEPTH + 5) + "1" + "}" * (MAX_SPEC_DEPTH + 5)
    _raises("spec_too_deep", parse, text)
    assert parse('{"a": ' * (MAX_SPEC_DEPTH - 1) + "1" + "}" * (MAX_SPEC_DEPTH - 1))


def test_deep_yaml_refused() -> None:
    text = "{a: " * 10_000 + "1" + "}" * 10_000  # flow YAML, not JSON (unquoted keys)
    _raises("spec_too_deep", parse, text)


def test_deep_inline_object_refused() -> None:
    doc: dict[str, Any] = {"openapi": "3.0.0"}
    node = doc
    for _ in range(10_000):
        node["a"] = {}
        node = node["a"]
    _raises("spec_too_deep", prepare, doc)


def test_inline_object_counted() -> None:
    doc = {"openapi": "3.0.0", "items": list(range(2_000))}
    _raises("spec_too_complex", prepare, doc, max_nodes=500)


def test_ref_doubling_refused_by_operations() -> None:
    error = _raises("spec_too_complex", operations, _ref_doubling(40))
    assert "$ref" in error.message and "200000" in error.message and SETTING in error.message


def test_ref_doubling_refused_by_prepare() -> None:
    spec = _ref_doubling(40)
    _raises("spec_too_complex", prepare, spec, max_nodes=5_000)
    _raises("spec_too_complex", prepare, json.dumps(spec), max_nodes=5_000)


def test_ref_budget_is_shared_across_operations() -> None:
    # About 400 objects for one operation is fine alone; sixty operations using the schema are not.
    spec = _ref_doubling(8)
    assert len(operations(spec, max_nodes=500)) == 1
    body = spec["paths"]["/x"]["post"]["requestBody"]
    spec["paths"] = {f"/x{i}": {"post": {"operationId": f"op{i}", "requestBody": body}} for i in range(60)}
    _raises("spec_too_complex", operations, spec, max_nodes=5_000)
    assert len(operations(spec)) == 60


def test_ref_doubling_refused_by_resolve_alone() -> None:
    spec = _ref_doubling(40)
    ref = {"$ref": "#/components/schemas/S39"}
    error = _raises("spec_too_complex", resolve, ref, spec, budget=expansion_budget(1_000))
    assert "1000" in error.message


def test_long_ref_chain_refused_not_recursion_error() -> None:
    # No doubling, but each hop is a level of recursion.
    count = MAX_EXPANSION_DEPTH * 5
    schemas = {f"S{i}": {"$ref": f"#/components/schemas/S{i + 1}"} for i in range(count)}
    schemas[f"S{count}"] = {"type": "string"}
    spec = _ref_doubling(2)
    spec["components"]["schemas"] = schemas
    spec["paths"]["/x"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/S0"
    }
    _raises("spec_too_deep", operations, spec)


async def test_prepare_async_matches_operations() -> None:
    text = (DATA / "petstore.yaml").read_text()
    prepared = await prepare_async(text)
    assert isinstance(prepared, PreparedSpec)
    expected = operations(parse(text))
    assert [op.payload for op in prepared.ops] == [op.payload for op in expected]
    assert prepared.count == len(expected) and prepared.spec == parse(text)
    # An inline object gives the same result as its text.
    inline = await prepare_async(parse(text))
    assert [op.payload for op in inline.ops] == [op.payload for op in expected]


async def test_prepare_async_raises_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        await prepare_async(_billion_laughs(30))
    assert err.value.code == "yaml_aliases"
