"""Tool modules as a model is offered them: the unified function list, and the service as an OpenAPI tool server.

Names follow Open WebUI 0.12.4's ``get_tools``: a function keeps its bare name; only a name an earlier tool (or
server) already took is prefixed ``{tool_id}_``, repeatedly. The spec is the stored one with ``get_tools``'s
edits: ``type: str`` read as ``string``, ``__`` parameters dropped, and the description replaced by the raw
docstring up to the first ``:param``/``:return`` (or the function's name when it has none). The docstring is
read from the source with ``ast`` (never imported); a function ``ast`` cannot see keeps its spec's description.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from executor.openapi.toollist import cut, unique_name
from executor.tools.records import ToolRecord

FACE_TITLE = "executor tool modules"


@dataclass(frozen=True)
class PublishedFunction:
    """One function of one tool as offered: its unique ``name``, and what to call."""

    name: str
    tool_id: str
    function: str
    spec: dict[str, Any]


@lru_cache(maxsize=256)
def _docstrings(content: str) -> dict[str, str | None]:
    """Raw ``__doc__`` of each method of ``class Tools``, read from the syntax tree (nothing is executed)."""
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    docs: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Tools":
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    docs[item.name] = ast.get_docstring(item, clean=False)
    return docs


def _offered_spec(tool: ToolRecord, spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    params = out.get("parameters")
    if isinstance(params, dict) and isinstance(params.get("properties"), dict):
        for value in params["properties"].values():
            if isinstance(value, dict) and value.get("type") == "str":
                value["type"] = "string"
        params["properties"] = {k: v for k, v in params["properties"].items() if not k.startswith("__")}
    name = str(out.get("name", ""))
    docs = _docstrings(tool.content)
    if name in docs:
        doc = docs[name]
        out["description"] = re.split(":(param|return)", doc, maxsplit=1)[0] if doc and doc.strip() else name
    return out


def module_functions(tools: Iterable[ToolRecord], taken: set[str]) -> list[PublishedFunction]:
    """Every function of these tools, in order, named uniquely against ``taken`` (which this extends)."""
    out: list[PublishedFunction] = []
    for tool in tools:
        for spec in tool.specs:
            function = spec.get("name")
            if not isinstance(function, str) or not function:
                continue
            full = unique_name(function, tool.id, taken)
            taken.add(full)
            name = cut(full)
            offered = _offered_spec(tool, spec)
            out.append(PublishedFunction(name=name, tool_id=tool.id, function=function, spec={**offered, "name": name}))
    return out


def openapi_document(functions: Iterable[PublishedFunction], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the tool-server face: ``POST /{name}`` per function, arguments as the JSON
    body (the function's parameters schema), paths relative to the face's base URL, which is the connection
    URL Open WebUI is given."""
    paths: dict[str, Any] = {}
    for fn in functions:
        params = fn.spec.get("parameters")
        schema = params if isinstance(params, dict) else {"type": "object", "properties": {}}
        description = str(fn.spec.get("description") or fn.name)
        paths[f"/{fn.name}"] = {
            "post": {
                "operationId": fn.name,
                "summary": description.strip().splitlines()[0][:200] if description.strip() else fn.name,
                "description": description,
                "tags": [fn.tool_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                "responses": {
                    "200": {"description": "What the function returned", "content": {"application/json": {}}},
                    "500": {"description": "The function raised, or its sandbox failed"},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": FACE_TITLE,
            "version": version,
            "description": "Every tool-module function the caller may use; each runs in the caller's own sandbox.",
        },
        "paths": paths,
    }
