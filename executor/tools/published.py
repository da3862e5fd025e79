"""Tool modules as a model is offered them: the unified function list, and the service as an OpenAPI tool server.

Names follow Open WebUI 0.12.4's ``get_tools``: a function keeps its bare name; only a name an earlier tool (or
server) already took is prefixed ``{tool_id}_``, repeatedly. On the face, names are given out over every
registered tool, oldest first, whoever asks: Open WebUI fetches the document once for everyone with only the
connection's key, then calls as each user, so a name must mean the same function for both (a per-caller naming
would let ``search`` mean tool A in the list and tool B in a call). Each name is also a valid function name for
OpenAI-style APIs and an operationId: characters outside ``[A-Za-z0-9_]`` become ``_``, at most 64 characters
(cut with a hash suffix), unique. The spec is the stored one with ``get_tools``'s
edits: ``type: str`` read as ``string``, ``__`` parameters dropped, and the description replaced by the raw
docstring up to the first ``:param``/``:return`` (or the function's name when it has none). The docstring is
read from the source with ``ast`` (never imported); a function ``ast`` cannot see keeps its spec's description.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from executor.openapi.toollist import cut, unique_name
from executor.tools.records import ToolRecord
from executor.tools.shaping import shape_result

FACE_TITLE = "executor tool modules"
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


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
    given: set[str] = set(taken)
    for tool in tools:
        for spec in tool.specs:
            function = spec.get("name")
            if not isinstance(function, str) or not function:
                continue
            full = unique_name(_NOT_NAME.sub("_", function), tool.id, taken)
            # A cut name could in principle meet one already given: prefix again until it is unique.
            while cut(full) in given:
                full = f"{tool.id}_{full}"
            taken.add(full)
            name = cut(full)
            given.add(name)
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
        operation: dict[str, Any] = {
            "operationId": fn.name,
            "summary": description.strip().splitlines()[0][:200] if description.strip() else fn.name,
            "description": description,
            "tags": [fn.tool_id],
        }
        # No body for a function without parameters: an empty object schema would read as one free-form
        # "body" argument to converters that keep non-object bodies (ours does); clients send {} or nothing.
        if schema.get("properties"):
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        operation["responses"] = {
            "200": {
                "description": "What the function returned: JSON, an inline HTML embed, or the text for the model",
                "content": {"application/json": {}, "text/html": {}, "text/plain": {}},
            },
            "404": {"description": "No such function is offered to the caller"},
            "422": {"description": "An unknown, reserved or missing argument"},
            "500": {"description": "The function raised, or its sandbox failed"},
        }
        paths[f"/{fn.name}"] = {"post": operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": FACE_TITLE,
            "version": version,
            "description": "Every tool-module function the caller may use; each runs in the caller's own sandbox.",
        },
        "paths": paths,
    }


@dataclass(frozen=True)
class FaceAnswer:
    """A tool's value as a tool server's HTTP answer."""

    media_type: str
    body: bytes
    headers: dict[str, str]


def _json(value: Any) -> FaceAnswer:
    return FaceAnswer("application/json", json.dumps(value, ensure_ascii=False, allow_nan=False).encode(), {})


def face_answer(encoded: Any, function: str, max_bytes: int) -> FaceAnswer:
    """The HTTP answer for a tool's encoded return value (``sandboxes/runtime/toolhost.py`` ``encode``), chosen
    so that Open WebUI's ``execute_tool_server`` + ``process_tool_result(..., "external")`` give the model, the
    files and the embeds its ``process_tool_result`` gives for the same value from a local tool module:

    - None, a str, a number, a bool, a dict or a list: the value as JSON, so Open WebUI sees the value itself (a
      ``data:image/...`` str becomes an image file, images inside dicts and lists are extracted, lists are
      ``{"results": ...}``, numbers and bools are ``str()``'d);
    - an ``HTMLResponse`` with ``Content-Disposition: inline`` and a 2xx status: its body as ``text/html`` with
      that header, which Open WebUI turns into an embed (the context of an ``(HTMLResponse, context)`` tuple
      cannot travel this way: the model gets the generic ``ui_component`` message);
    - anything else (other responses, tuples, objects, NaN, a value larger than ``max_bytes``): ``text/plain``,
      the text a local tool's value gives the model (a text body is never parsed as JSON by Open WebUI).
    """
    kind = encoded.get("type") if isinstance(encoded, dict) else None
    size = len(json.dumps(encoded, default=str))
    if size <= max_bytes:
        if kind == "none":
            return _json(None)
        if kind in ("str", "json"):
            return _json(encoded.get("value"))
        if kind == "scalar" and encoded.get("value") is not None:
            return _json(encoded["value"])
        items = encoded.get("items") if kind == "tuple" else None
        html = items[0] if isinstance(items, list) and len(items) == 2 else encoded
        if isinstance(html, dict) and html.get("type") == "response" and html.get("html"):
            raw = html.get("headers")
            headers: dict[str, Any] = raw if isinstance(raw, dict) else {}
            disposition = next((str(v) for k, v in headers.items() if str(k).lower() == "content-disposition"), "")
            if "inline" in disposition and 200 <= int(html.get("status_code") or 200) < 300:
                body = str(html.get("body", "")).encode()
                return FaceAnswer("text/html", body, {"Content-Disposition": "inline"})
    text, _ = shape_result(encoded, function, max_bytes)
    if text is None:
        return _json(None)
    return FaceAnswer("text/plain", text.encode(), {})
