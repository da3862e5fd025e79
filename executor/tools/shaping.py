"""A tool's return value as Open WebUI 0.12.4's ``process_tool_result`` shapes it: the text the model is given,
and the files and embeds the chat shows (``ToolOutput``\\s here).

The value never exists in this process: the tool host encodes it in the sandbox (``sandboxes/runtime/toolhost.py``
``encode``) as a tagged JSON object, and this reads that encoding:

    {"type": "none"} | {"type": "str", "value": str} | {"type": "scalar", "value": ..., "text": str(value)}
    {"type": "json", "value": dict | list} | {"type": "tuple", "items": [encoded, ...]}
    {"type": "response", "html": bool, "status_code": int, "headers": {...}, "body": str}
    {"type": "repr", "value": str(value)}

The rules, as ``process_tool_result`` has them for a tool module (``tool_type`` "", and "mcp" for MCP tools):

- an ``HTMLResponse`` with ``Content-Disposition: inline`` is an embed; the model gets a ``ui_component`` status
  message (or the context of an ``(HTMLResponse, context)`` tuple); without ``inline``, its body as text;
- a ``data:image/...`` string becomes an image file and the model gets "<fn>: Image file read successfully.";
- in lists (not MCP) other ``data:`` strings become data files; MCP content items (text, image, audio, resource)
  are unpacked; base64 image URIs anywhere inside dicts and lists become image files, ``[image]`` in their place;
- a list is ``{"results": [...]}``; dicts and lists are JSON with ``indent=2``; anything else is ``str()``'d.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from executor.toolresult import ToolOutput

BASE64_IMAGE_DATA_URI_RE = re.compile(r"data:image/[a-zA-Z0-9.+-]+;base64,[A-Za-z0-9+/]+={0,2}", re.IGNORECASE)
_DATA_URI = re.compile(r"data:([^;,]*)(;base64)?,(.*)", re.DOTALL)
TRUNCATED = "\n[... result truncated]"


def _ui_message(function: str, status: int) -> dict[str, Any]:
    if 200 <= status < 300:
        return {"status": "success", "code": "ui_component",
                "message": f"{function}: Embedded UI result is active and visible to the user."}  # fmt: skip
    if 400 <= status < 500:
        message = f"{function}: Client error {status} from embedded UI result."
    elif 500 <= status < 600:
        message = f"{function}: Server error {status} from embedded UI result."
    else:
        message = f"{function}: Unexpected status code {status} from embedded UI result."
    return {"status": "error", "code": "ui_component", "message": message}


def decode(value: Any) -> Any:
    """The encoded value as the rules below see it: str, JSON data, a tuple, ``None``; a scalar (int, float,
    bool) or anything else as a ``_Scalar`` (its ``str()``, remembering its JSON value); a response as a
    ``_Response``."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "str":
        return str(value.get("value", ""))
    if kind == "json":
        return copy.deepcopy(value.get("value"))  # process() removes data URIs from lists: not from the caller's
    if kind == "scalar":
        text = str(value.get("text", value.get("value")))
        number = value.get("value")
        if number is None and text in ("nan", "inf", "-inf"):
            number = float(text)  # NaN and infinities travel as null; json.dumps writes NaN, Infinity
        return _Scalar(text, number)
    if kind == "tuple":
        items = value.get("items")
        return tuple(decode(i) for i in items) if isinstance(items, list) else ()
    if kind == "response":
        headers = value.get("headers")
        return _Response(
            html=bool(value.get("html")),
            status=int(value.get("status_code") or 200),
            headers={str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {},
            body=str(value.get("body", "")),
            text=str(value.get("repr", "")),
        )
    if kind == "repr":
        text = str(value.get("value", ""))
        return _Scalar(text, text)
    return None


class _Scalar(str):
    """A value the model is given as ``str(value)``, but that is not a str to the rules (an int, a bool...);
    ``json`` is what ``json.dumps`` writes for it inside a tuple (the number, or the text when the value was not
    JSON at all: there Open WebUI's ``json.dumps`` raises)."""

    json: Any

    def __new__(cls, text: str, json_value: Any = None) -> _Scalar:
        self = super().__new__(cls, text)
        self.json = json_value
        return self


def _plain(value: Any) -> Any:
    """A decoded value as ``json.dumps`` sees the original: scalars as their JSON values, tuples as lists."""
    if isinstance(value, _Scalar):
        return value.json
    if isinstance(value, _Response):
        return value.text  # not JSON: Open WebUI's json.dumps raises TypeError here
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Response:
    def __init__(self, *, html: bool, status: int, headers: dict[str, str], body: str, text: str) -> None:
        self.html, self.status, self.headers, self.body, self.text = html, status, headers, body, text


def _extract_images(value: Any, files: list[dict[str, Any]]) -> Any:
    if isinstance(value, str) and not isinstance(value, _Scalar):
        if BASE64_IMAGE_DATA_URI_RE.fullmatch(value):
            files.append({"type": "image", "url": value})
            return "[image]"
        return value
    if isinstance(value, dict):
        return {k: _extract_images(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_extract_images(v, files) for v in value]
    if isinstance(value, tuple):
        return tuple(_extract_images(v, files) for v in value)
    return value


def _mcp_items(items: list[Any], files: list[dict[str, Any]]) -> Any:
    response: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            text = item.get("text", "")
            if isinstance(text, str):
                try:
                    text = json.loads(text)
                except ValueError:
                    pass
            response.append(text)
        elif kind in ("image", "audio"):
            data = item.get("data", item.get("blob", ""))
            files.append({"type": kind, "url": f"data:{item.get('mimeType')};base64,{data}"})
        elif kind == "resource":
            raw = item.get("resource")
            resource: dict[str, Any] = raw if isinstance(raw, dict) else {}
            text = resource.get("text", "")
            if isinstance(text, str) and text:
                try:
                    text = json.loads(text)
                except ValueError:
                    pass
                response.append(text)
            elif resource.get("blob"):
                mime = resource.get("mimeType") or "application/octet-stream"
                if str(mime).startswith("image/"):
                    files.append({"type": "image", "url": f"data:{mime};base64,{resource.get('blob', '')}"})
                else:
                    response.append(f"[Resource: {resource.get('uri', 'resource')}] (binary data, mimeType: {mime})")
            elif resource.get("uri"):
                response.append(resource.get("uri"))
    return response[0] if len(response) == 1 else response


def process(function: str, value: Any, *, tool_type: str = "") -> tuple[str | None, list[dict[str, Any]], list[str]]:
    """``process_tool_result`` on a decoded value: (text for the model, files, embeds)."""
    embeds: list[str] = []
    files: list[dict[str, Any]] = []
    context: Any = None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], _Response) and value[0].html:
        value, context = value
    if isinstance(value, _Response) and value.html:
        if "inline" in value.headers.get("content-disposition", ""):
            embeds.append(value.body)
            ok = 200 <= value.status < 300
            # An int, float or bool context is no context (a _Scalar is a str only to carry its text).
            if ok and isinstance(context, str | dict | list) and not isinstance(context, _Scalar):
                value = context
            else:
                value = _ui_message(function, value.status)
        else:
            value = value.body
    if isinstance(value, str) and not isinstance(value, _Scalar) and value.startswith("data:image/"):
        files.append({"type": "image", "url": value})
        value = f"{function}: Image file read successfully."
    if isinstance(value, list):
        if tool_type == "mcp":
            value = _mcp_items(value, files)
        else:
            for item in list(value):
                if isinstance(item, str) and item.startswith("data:") and not BASE64_IMAGE_DATA_URI_RE.fullmatch(item):
                    files.append({"type": "data", "content": item})
                    value.remove(item)
    value = _extract_images(value, files)
    if isinstance(value, list):
        value = {"results": value}
    if isinstance(value, dict | list):
        value = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if value is not None and not isinstance(value, str):
        if isinstance(value, tuple):
            value = json.dumps(_plain(value[0]), indent=2, ensure_ascii=False, default=str) if value else ""
        elif isinstance(value, _Response):
            value = value.text or f"<{'HTMLResponse' if value.html else 'Response'} {value.status}>"
        else:
            value = str(value)
    return (str(value) if value is not None else None), files, embeds


def _output_of(file: dict[str, Any]) -> ToolOutput | None:
    url = file.get("url") if file.get("type") != "data" else file.get("content")
    if not isinstance(url, str):
        return None
    match = _DATA_URI.fullmatch(url)
    if match is None:
        kind = "image" if file.get("type") == "image" else "file"
        return ToolOutput(type=kind, mime_type="application/octet-stream", data="", url=url)
    mime = match.group(1) or "text/plain"
    data = match.group(3)
    if mime.startswith("image/svg"):
        return ToolOutput(type="svg", mime_type=mime, data=data)
    kind = "image" if mime.startswith("image/") else "file"
    return ToolOutput(type=kind, mime_type=mime, data=data)


def shape_result(encoded: Any, function: str, max_bytes: int, *, tool_type: str = "") -> tuple[Any, list[ToolOutput]]:
    """The ToolResult's ``result`` (the model's text) and ``outputs`` (embeds, images, files) for an encoded
    value, cut to ``max_bytes`` in all (outputs past it are dropped; the text is cut with a marker)."""
    text, files, embeds = process(function, decode(encoded), tool_type=tool_type)
    outputs: list[ToolOutput] = [ToolOutput(type="html", mime_type="text/html", data=e) for e in embeds]
    outputs += [o for o in (_output_of(f) for f in files) if o is not None]
    budget = max_bytes
    kept: list[ToolOutput] = []
    for output in outputs:
        size = len(output.data) + len(output.url or "")
        if size > budget:
            continue
        budget -= size
        kept.append(output)
    if text is not None and len(text) > budget:
        text = text[: max(budget, 0)] + TRUNCATED
    return text, kept
