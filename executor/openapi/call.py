"""Arguments -> HTTP request for one operation, and HTTP response -> ToolResult."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime
from string import punctuation
from typing import Any
from urllib.parse import quote, urlencode

from executor.errors import ApiError
from executor.net import EgressDenied, OutboundResponse, check_header, check_path_value
from executor.openapi.convert import Operation
from executor.toolresult import ToolError, ToolOutput, ToolResult

METHODS_WITH_BODY = ("post", "put", "patch", "delete")
TEMPLATE_VARS = ("USER_ID", "USER_NAME", "USER_EMAIL", "USER_ROLE", "CHAT_ID", "MESSAGE_ID", "MODEL_ID")
FILENAME_RE = re.compile(r"""filename\*?=(?:UTF-8'')?["']?([^"';]+)""", re.IGNORECASE)


@dataclass
class PreparedRequest:
    method: str
    url: str
    headers: dict[str, str]
    json_body: Any | None


def fill_template(value: str, identity: dict[str, str]) -> str:
    """Fill ``{{USER_ID}}``-style placeholders; values are percent-encoded as Open WebUI does."""
    for var in TEMPLATE_VARS:
        value = value.replace("{{" + var + "}}", identity.get(var, ""))
    return quote(value, safe=punctuation + " \t")


def build_request(
    op: Operation, connection_url: str, arguments: dict[str, Any], headers: dict[str, str]
) -> PreparedRequest:
    """Place every argument where the spec says it goes; unknown arguments are dropped."""
    args = {k: v for k, v in arguments.items() if k in op.property_names}
    required = set(op.payload["parameters"].get("required") or [])
    missing = sorted(n for n in required if n not in args)
    if missing:
        raise ApiError(422, "missing_argument", f"missing required argument {missing[0]!r}", field=missing[0])

    path = op.path
    query: list[tuple[str, Any]] = []
    cookies: list[str] = []
    out_headers = dict(headers)
    for param in op.params:
        if param.name not in args:
            if param.location == "path":
                raise ApiError(422, "missing_argument", f"missing path parameter {param.name!r}", field=param.name)
            continue
        value = args[param.name]
        if param.location == "path":
            text = _scalar(value)
            try:
                check_path_value(param.name, text)
            except EgressDenied as exc:
                raise ApiError(422, "path_traversal", exc.message, field=param.name) from None
            path = path.replace("{" + param.name + "}", quote(text, safe=""))
        elif param.location == "query":
            if value is None or (value == "" and not param.required):
                continue
            values = value if isinstance(value, list) else [value]
            query.extend((param.name, _scalar(v)) for v in values)
        elif param.location == "header":
            if value is None:
                continue
            text = _scalar(value)
            try:
                check_header(param.name, text)
            except EgressDenied as exc:
                raise ApiError(422, "header_injection", exc.message, field=param.name) from None
            out_headers[param.name] = text
        elif param.location == "cookie" and value is not None:
            cookies.append(f"{param.name}={quote(_scalar(value), safe='')}")
    if cookies:
        out_headers["Cookie"] = "; ".join(cookies)

    url = connection_url.rstrip("/") + path
    if query:
        url += "?" + urlencode(query)

    body: Any = None
    if op.method in METHODS_WITH_BODY:
        declared = {p.name for p in op.params}
        if op.body_mode == "value":
            body = args.get(op.body_key or "body")
        elif op.body_mode == "properties":
            body = {k: v for k, v in args.items() if k in op.body_properties or k not in declared}
        else:
            body = {k: v for k, v in args.items() if k not in declared}
        if body is None:
            body = {}
        out_headers.setdefault("Content-Type", op.body_media_type or "application/json")
    return PreparedRequest(op.method.upper(), url, out_headers, body)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def embed_message(function_name: str) -> dict[str, str]:
    """What the model reads after an inline HTML embed: Open WebUI's words exactly."""
    return {
        "status": "success",
        "code": "ui_component",
        "message": f"{function_name}: Embedded UI result is active and visible to the user.",
    }


def to_result(resp: OutboundResponse, started: datetime, finished: datetime, *, function_name: str) -> ToolResult:
    """Shape a tool server's response: JSON parsed, text as text, binary as an output, errors structured."""
    timing = {
        "started_at": started,
        "finished_at": finished,
        "duration_ms": round((finished - started).total_seconds() * 1000, 3),
    }
    ctype = resp.content_type
    if resp.status_code >= 400:
        message = f"HTTP error {resp.status_code}: {resp.text()}"
        return ToolResult(
            status="error",
            result={"error": message},
            http_status=resp.status_code,
            error=ToolError(name="HTTPError", value=message),
            truncated=resp.truncated,
            **timing,
        )
    outputs: list[ToolOutput] = []
    result: Any
    disposition = resp.headers.get("content-disposition", "")
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            result = json.loads(resp.content) if resp.content else None
        except ValueError:
            result = resp.text()  # a cut or broken JSON body is still worth showing
    elif ctype == "text/html" and "inline" in disposition.lower():
        outputs.append(ToolOutput(type="html", mime_type=ctype, data=resp.text()))
        result = embed_message(function_name)
    elif ctype == "image/svg+xml":
        outputs.append(ToolOutput(type="svg", mime_type=ctype, data=resp.text()))
        result = "An SVG image was returned and is shown to the user."
    elif ctype.startswith("text/") or not ctype:
        result = resp.text()
        if ctype == "text/markdown":
            outputs.append(ToolOutput(type="markdown", mime_type=ctype, data=result))
    else:
        match = FILENAME_RE.search(disposition)
        name = match.group(1) if match else None
        kind = "image" if ctype.startswith("image/") else "file"
        outputs.append(ToolOutput(type=kind, mime_type=ctype, data=base64.b64encode(resp.content).decode(), name=name))
        result = f"A {kind} ({ctype}, {len(resp.content)} bytes) was returned as an output."
    return ToolResult(
        status="ok",
        result=result,
        http_status=resp.status_code,
        outputs=outputs,
        truncated=resp.truncated,
        **timing,
    )


def error_result(name: str, value: str, started: datetime, finished: datetime) -> ToolResult:
    """A call that produced no HTTP response (refused, timed out, unreachable)."""
    return ToolResult(
        status="error",
        result={"error": value},
        error=ToolError(name=name, value=value),
        started_at=started,
        finished_at=finished,
        duration_ms=round((finished - started).total_seconds() * 1000, 3),
    )
