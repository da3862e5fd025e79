"""OpenAPI operations -> OpenAI function specs, as Open WebUI's ``convert_openapi_to_tool_payload`` does.

Names, descriptions, property names and types and ``required`` lists match Open WebUI's output for the same
document (tests/test_openapi_convert.py checks that against payloads made with the published package). On
top of that: ``$ref`` is followed in parameters and request bodies too; ``default``, ``format``, nested
object schemas and array item types are kept; a request body that is not an object with properties (an
array, a scalar) becomes one property, ``body``, instead of replacing the whole parameter schema; and each
function remembers where every argument goes (path, query, header, cookie, body) so calls can send it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from executor.openapi.document import DEFAULT_MAX_SPEC_NODES, NodeBudget
from executor.openapi.refs import expansion_budget, resolve, resolve_shallow

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Schema keywords copied onto a parameter's property besides type, description and items.
KEPT_KEYWORDS = (
    "default",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "properties",
    "additionalProperties",
    "required",
)
BodyMode = Literal["none", "properties", "value"]


@dataclass(frozen=True)
class Param:
    """One declared parameter and where its value is sent."""

    name: str
    location: Literal["path", "query", "header", "cookie"]
    required: bool


@dataclass
class Operation:
    """An operation with an ``operationId``: its function spec and how to turn arguments into a request."""

    operation_id: str
    method: str
    path: str
    payload: dict[str, Any]
    params: list[Param] = field(default_factory=list)
    body_mode: BodyMode = "none"
    body_media_type: str | None = None
    body_properties: frozenset[str] = frozenset()
    body_key: str | None = None  # the property holding a whole non-object body
    has_request_body: bool = False

    @property
    def property_names(self) -> frozenset[str]:
        return frozenset(self.payload["parameters"]["properties"])


def operations(spec: dict[str, Any], *, max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> list[Operation]:
    """Every operation of ``spec`` that has an ``operationId``, in document order.

    ``$ref`` expansion across all operations together may make at most ``max_nodes`` objects and arrays;
    past that (or nested too deep) this raises ``SpecError`` (``spec_too_complex``, ``spec_too_deep``).
    """
    # One budget for the whole document: a schema small enough per operation can still be used by
    # thousands of operations.
    budget = expansion_budget(max_nodes)
    result: list[Operation] = []
    paths = spec.get("paths")
    if not isinstance(paths, dict):
        return result
    for path, item in paths.items():
        if not isinstance(item, dict):
            continue
        item = resolve_shallow(item, spec)
        path_params = item.get("parameters") if isinstance(item.get("parameters"), list) else []
        for method, op in item.items():
            if method not in HTTP_METHODS or not isinstance(op, dict) or not op.get("operationId"):
                continue
            converted = _convert(spec, str(path), method, op, path_params, budget)
            result.append(converted)
    return result


def convert_openapi_to_tool_payload(
    spec: dict[str, Any], *, max_nodes: int = DEFAULT_MAX_SPEC_NODES
) -> list[dict[str, Any]]:
    """The function specs of ``spec`` (same name and contract as Open WebUI's function)."""
    return [op.payload for op in operations(spec, max_nodes=max_nodes)]


def _merged_params(spec: dict[str, Any], path_params: list[Any], op_params: Any) -> list[dict[str, Any]]:
    # Operation-level parameters override path-level ones with the same (name, in), per the spec.
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*path_params, *(op_params if isinstance(op_params, list) else [])]:
        param = resolve_shallow(raw, spec)
        if isinstance(param, dict) and param.get("name"):
            merged[(str(param["name"]), str(param.get("in", "")))] = param
    return list(merged.values())


def _param_property(spec: dict[str, Any], param: dict[str, Any], budget: NodeBudget) -> dict[str, Any]:
    schema = param.get("schema")
    schema = resolve(schema, spec, budget=budget) if isinstance(schema, dict) else {}
    description = schema.get("description") or param.get("description") or ""
    enum = schema.get("enum")
    if enum and isinstance(enum, list):
        description += f". Possible values: {', '.join(str(v) for v in enum)}"
    prop: dict[str, Any] = {"type": schema.get("type") or "string", "description": description}
    if prop["type"] == "array":
        # Function-calling APIs reject an array without item types.
        prop["items"] = schema.get("items") or {"type": "string"}
    for key in KEPT_KEYWORDS:
        if key in schema and schema[key] is not None:
            prop[key] = copy.deepcopy(schema[key])
    if enum and isinstance(enum, list) and schema.get("type"):
        prop["enum"] = list(enum)
    return prop


def _json_media_type(content: dict[str, Any]) -> str | None:
    if "application/json" in content:
        return "application/json"
    for media in content:
        base = str(media).split(";")[0].strip().lower()
        if base.endswith("/json") or base.endswith("+json"):
            return str(media)
    return None


def _object_parts(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Properties and required names of an object schema, looking into ``allOf`` members too."""
    properties: dict[str, Any] = dict(schema.get("properties") or {})
    required: list[str] = list(schema.get("required") or [])
    for member in schema.get("allOf") or []:
        if isinstance(member, dict):
            props, req = _object_parts(member)
            properties.update(props)
            required += req
    return properties, required


def _convert(
    spec: dict[str, Any], path: str, method: str, op: dict[str, Any], path_params: list[Any], budget: NodeBudget
) -> Operation:
    parameters: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
    payload: dict[str, Any] = {
        "type": "function",
        "name": op["operationId"],
        # Exactly Open WebUI's expression: a present-but-empty description wins over the summary.
        "description": op.get("description", op.get("summary", "No description available.")),
        "parameters": parameters,
    }
    operation = Operation(operation_id=str(op["operationId"]), method=method, path=path, payload=payload)

    for param in _merged_params(spec, path_params, op.get("parameters")):
        name = str(param["name"])
        location = param.get("in")
        parameters["properties"][name] = _param_property(spec, param, budget)
        if param.get("required"):
            parameters["required"].append(name)
        if location in ("path", "query", "header", "cookie"):
            operation.params.append(Param(name, location, bool(param.get("required") or location == "path")))

    body = resolve_shallow(op.get("requestBody"), spec)
    content = body.get("content") if isinstance(body, dict) else None
    if isinstance(content, dict) and content:
        operation.has_request_body = True
        media = _json_media_type(content)
        operation.body_media_type = media
        raw_schema = (content.get(media) or {}).get("schema") if media else None
        schema = resolve(raw_schema, spec, budget=budget) if isinstance(raw_schema, dict) else {}
        properties, required = _object_parts(schema)
        if properties:
            operation.body_mode = "properties"
            operation.body_properties = frozenset(properties)
            parameters["properties"].update(properties)
            if required:
                parameters["required"] = list(dict.fromkeys(parameters["required"] + required))
        elif schema:
            # An array (or scalar) body: one property carries it, so the rest of the spec stays usable.
            key = "body" if "body" not in parameters["properties"] else "request_body"
            operation.body_mode = "value"
            operation.body_key = key
            parameters["properties"][key] = schema
            if body.get("required"):
                parameters["required"].append(key)
    return operation
