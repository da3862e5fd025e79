"""Arguments -> HTTP request for one operation, and HTTP response -> ToolResult."""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from string import punctuation
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from executor.errors import Invalid, Unprocessable
from executor.net import EgressDenied, OutboundResponse, check_header, check_path_value, origin
from executor.openapi.convert import Operation
from executor.toolresult import ToolError, ToolOutput, ToolResult

METHODS_WITH_BODY = ("post", "put", "patch", "delete")
TEMPLATE_VARS = ("USER_ID", "USER_NAME", "USER_EMAIL", "USER_ROLE", "CHAT_ID", "MESSAGE_ID", "MODEL_ID")
FILENAME_RE = re.compile(r"""filename\*?=(?:UTF-8'')?["']?([^"';]+)""", re.IGNORECASE)
ABSOLUTE_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
# Real tool arguments and answers nest a few levels; past this, every recursive encoder on the way (FastAPI's,
# pydantic's) risks Python's recursion limit, so deeper ones are refused or kept as text.
MAX_VALUE_DEPTH = 100


@dataclass
class PreparedRequest:
    method: str
    url: httpx.URL  # parsed once, here; the client sends it as is
    headers: dict[str, str]
    json_body: Any | None


@functools.lru_cache(maxsize=1024)
def _origin_of(connection_url: str) -> tuple[str, str, int | None] | None:
    # Parsing a URL is a measurable part of a call; a connection's URL is parsed once.
    try:
        return origin(connection_url)
    except httpx.InvalidURL:
        return None


def fill_template(value: str, identity: dict[str, str]) -> str:
    """Fill ``{{USER_ID}}``-style placeholders; values are percent-encoded as Open WebUI does."""
    for var in TEMPLATE_VARS:
        value = value.replace("{{" + var + "}}", identity.get(var, ""))
    return quote(value, safe=punctuation + " \t")


def build_request(
    op: Operation, connection_url: str, arguments: dict[str, Any], headers: dict[str, str]
) -> PreparedRequest:
    """Place every argument where the spec says it goes; unknown arguments are dropped.

    Raises :class:`Unprocessable` (422) for a missing argument or a path or header value that would change the
    request's shape, and :class:`Invalid` (400) for an absolute URL as a path value or arguments nested too deep.
    """
    args = {k: v for k, v in arguments.items() if k in op.property_names}
    deep = next((k for k, v in args.items() if too_deep(v, MAX_VALUE_DEPTH - 1)), None)
    if deep is not None:
        raise Invalid("argument_too_deep", f"argument {deep!r} nests deeper than {MAX_VALUE_DEPTH} levels", field=deep)
    required = set(op.payload["parameters"].get("required") or [])
    missing = sorted(n for n in required if n not in args)
    if missing:
        raise Unprocessable("missing_argument", f"missing required argument {missing[0]!r}", field=missing[0])

    path = op.path
    query: list[tuple[str, Any]] = []
    cookies: list[str] = []
    out_headers = dict(headers)
    for param in op.params:
        if param.name not in args:
            if param.location == "path":
                raise Unprocessable("missing_argument", f"missing path parameter {param.name!r}", field=param.name)
            continue
        value = args[param.name]
        if param.location == "path":
            text = _scalar(value)
            if ABSOLUTE_URL_RE.match(text):
                raise Invalid(
                    "path_absolute_url",
                    f"path parameter {param.name!r} holds an absolute URL; a path value is one part of the tool "
                    "server's own path and cannot name another server",
                    field=param.name,
                )
            try:
                check_path_value(param.name, text)
            except EgressDenied as exc:
                raise Unprocessable("path_traversal", exc.message, field=param.name) from None
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
                raise Unprocessable("header_injection", exc.message, field=param.name) from None
            out_headers[param.name] = text
        elif param.location == "cookie" and value is not None:
            cookies.append(f"{param.name}={quote(_scalar(value), safe='')}")
    if cookies:
        out_headers["Cookie"] = "; ".join(cookies)

    # Open WebUI's rule is url + path; the "/" keeps a spec path without one ("{x}", ".evil.example") from
    # running into the connection's host or port.
    url = connection_url.rstrip("/") + "/" + path.lstrip("/")
    if query:
        url += "?" + urlencode(query)
    try:
        parsed: httpx.URL | None = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    expected = _origin_of(connection_url)
    if parsed is None or expected is None or origin(parsed) != expected:
        raise Invalid(
            "bad_operation_path",
            f"operation {op.operation_id!r}: its path {op.path!r} with these arguments does not stay on the tool "
            "server's host",
            field="path",
        )

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
    assert parsed is not None
    return PreparedRequest(op.method.upper(), parsed, out_headers, body)


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


def too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and objects more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth >= limit:
                return True
            stack.extend((item, depth + 1) for item in node if isinstance(item, dict | list))
    return False


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as the API's JSON encodes it (UTF-8, control characters escaped)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())


def fit_text(text: str, budget: int) -> tuple[str, bool]:
    """The longest prefix of ``text`` whose JSON string form fits in ``budget`` bytes; True when cut.

    Escapes make the encoded form up to six times the text (``\\u0000`` per NUL byte), so the decoded-body cap
    alone does not bound what a call returns.
    """
    if 6 * len(text) + 2 <= budget:
        return text, False
    cut = text[: max(0, budget)]  # every character is at least one byte
    size = encoded_size(cut)
    if size <= budget and len(cut) == len(text):
        return text, False
    while size > budget and cut:
        cut = cut[: max(0, int(len(cut) * budget / size) - 1)]
        size = encoded_size(cut)
    return cut, True


def to_result(
    resp: OutboundResponse, started: datetime, finished: datetime, *, function_name: str, max_bytes: int
) -> ToolResult:
    """Shape a tool server's response: JSON parsed, text as text, binary as an output, errors structured.

    ``max_bytes`` bounds the JSON the result encodes to (its body parts; the envelope adds a few hundred bytes):
    past it, text is cut and ``truncated`` is set; a parsed JSON answer that is too large comes back as cut text.
    """
    timing = {
        "started_at": started,
        "finished_at": finished,
        "duration_ms": round((finished - started).total_seconds() * 1000, 3),
    }
    ctype = resp.content_type
    truncated = resp.truncated
    if resp.status_code >= 400:
        # The message is there twice (result.error and error.value): half the budget each.
        text, cut = fit_text(f"HTTP error {resp.status_code}: {resp.text()}", max_bytes // 2)
        return ToolResult(
            status="error",
            result={"error": text},
            http_status=resp.status_code,
            error=ToolError(name="HTTPError", value=text),
            truncated=truncated or cut,
            **timing,
        )
    outputs: list[ToolOutput] = []
    result: Any
    disposition = resp.headers.get("content-disposition", "")
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            result = json.loads(resp.content) if resp.content else None
        except (ValueError, RecursionError):
            result = resp.text()  # a cut, broken or absurdly nested JSON body is still worth showing
        if not isinstance(result, str) and (too_deep(result, MAX_VALUE_DEPTH) or encoded_size(result) > max_bytes):
            result = resp.text()
        if isinstance(result, str):
            result, cut = fit_text(result, max_bytes)
            truncated = truncated or cut
    elif ctype == "text/html" and "inline" in disposition.lower():
        data, cut = fit_text(resp.text(), max_bytes)
        outputs.append(ToolOutput(type="html", mime_type=ctype, data=data))
        result = embed_message(function_name)
        truncated = truncated or cut
    elif ctype == "image/svg+xml":
        data, cut = fit_text(resp.text(), max_bytes)
        outputs.append(ToolOutput(type="svg", mime_type=ctype, data=data))
        result = "An SVG image was returned and is shown to the user."
        truncated = truncated or cut
    elif ctype.startswith("text/") or not ctype:
        if ctype == "text/markdown":  # the text is there twice: result and output
            result, cut = fit_text(resp.text(), max_bytes // 2)
            outputs.append(ToolOutput(type="markdown", mime_type=ctype, data=result))
        else:
            result, cut = fit_text(resp.text(), max_bytes)
        truncated = truncated or cut
    else:
        match = FILENAME_RE.search(disposition)
        name = match.group(1) if match else None
        kind = "image" if ctype.startswith("image/") else "file"
        encoded = 4 * -(-len(resp.content) // 3)
        if encoded > max_bytes:
            result = f"A {kind} ({ctype}, {len(resp.content)} bytes) was returned, too large to pass on."
            truncated = True
        else:
            data = base64.b64encode(resp.content).decode()
            outputs.append(ToolOutput(type=kind, mime_type=ctype, data=data, name=name))
            result = f"A {kind} ({ctype}, {len(resp.content)} bytes) was returned as an output."
    return ToolResult(
        status="ok",
        result=result,
        http_status=resp.status_code,
        outputs=outputs,
        truncated=truncated,
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
