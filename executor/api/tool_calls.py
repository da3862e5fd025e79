"""Calling tool modules: our call routes (JSON and Server-Sent Events), event-call replies, and the service as
one OpenAPI tool server (``/api/v1/tools/server``) that Open WebUI adds as a connection."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, model_validator

from executor.access.audit import AuditLog
from executor.access.principal import Principal
from executor.api.deps import CurrentPrincipal
from executor.errors import NotFound, Unavailable
from executor.sessions.log import ExecutionLog
from executor.toolresult import ToolResult
from executor.tools.dispatch import ToolHosts
from executor.tools.published import PublishedFunction, face_answer, module_functions, openapi_document
from executor.tools.records import ToolCatalog, ToolRecord
from executor.tools.shaping import shape_result

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/tools", tags=["tools"])
face = APIRouter(prefix="/api/v1/tools/server", tags=["tool server face"])

ToolId = Annotated[str, Path(max_length=128, pattern=r"^[a-z_][a-z0-9_]*$")]
FunctionName = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE_S = 15.0
DISPLAY_FILE_EXTRAS = ("inline", "page")


class ToolCallRequest(BaseModel):
    """A call of one function: its arguments (the model's JSON), and what the chat backend knows of the chat."""

    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = Field(
        None,
        description="Open WebUI's __metadata__ (chat_id, message_id, session_id, model, messages, files...); "
        "chat_id, message_id, messages, files and model also fill __chat_id__, __message_id__, __messages__, "
        "__files__ and __model__.",
    )


class EventCallReply(BaseModel):
    """The answer to an ``__event_call__`` (what the user answered), or why there is none."""

    model_config = ConfigDict(extra="forbid")

    value: Any = None
    error: str | None = Field(None, max_length=4000, description="Refuse the call: the tool's await raises this.")

    @model_validator(mode="after")
    def _bounded(self) -> EventCallReply:
        if len(json.dumps(self.value, default=str)) > 1 << 20:
            raise ValueError("value is larger than 1 MiB")
        return self


def _catalog(request: Request) -> ToolCatalog:
    catalog: ToolCatalog | None = getattr(request.app.state, "tools", None)
    if catalog is None:
        raise Unavailable("tools_unavailable", "the tool registry is not running")
    return catalog


def _hosts(request: Request) -> ToolHosts:
    hosts: ToolHosts | None = getattr(request.app.state, "tool_hosts", None)
    if hosts is None:
        raise Unavailable("tools_unavailable", "tool sandboxes are not running")
    return hosts


Catalog = Annotated[ToolCatalog, Depends(_catalog)]
Hosts = Annotated[ToolHosts, Depends(_hosts)]


async def _call(
    request: Request,
    principal: Principal,
    tool: ToolRecord,
    user_valves: dict[str, Any],
    function: str,
    body: ToolCallRequest,
    publish: Any = None,
    *,
    shape: Any = shape_result,
) -> ToolResult:
    hosts = _hosts(request)
    audit: AuditLog = request.app.state.audit
    result = await hosts.call(
        tool, principal, function, body.arguments,
        user_valves=user_valves, metadata=body.metadata, publish=publish, shape=shape,
    )  # fmt: skip
    audit.record(
        "tool_call",
        "tool.call",
        principal=principal,
        target=f"{tool.id}/{function}"[:255],
        duration_ms=result.duration_ms,
        detail={"result": result.status, **({"error": result.error.name} if result.error else {})},
    )
    return result


@router.post("/id/{id}/call/{function}", response_model=ToolResult)
async def call_tool(
    id: ToolId, function: FunctionName, body: ToolCallRequest, request: Request, principal: CurrentPrincipal,
    catalog: Catalog, hosts: Hosts,
) -> ToolResult:  # fmt: skip
    """Call one function of a tool in the caller's own sandbox. 404 for an unknown tool or function, 422 naming
    an unknown, reserved (``__...``) or missing argument. ``__event_call__`` fails at once here: use
    ``/stream`` for tools that ask the user something."""
    tool, user_valves = await catalog.for_call(principal, id)
    hosts.check_arguments(tool, function, body.arguments)
    return await _call(request, principal, tool, user_valves, function, body)


@router.post(
    "/id/{id}/call/{function}/stream",
    response_class=Response,
    responses={
        200: {
            "description": "Server-Sent Events: stdout, stderr, event (each __event_emitter__ event), event_call "
            "({call_id, event}: answer with POST .../calls/{call_id}/reply), truncated, done (the ToolResult)",
            "content": {"text/event-stream": {}},
        }
    },
)
async def call_tool_stream(
    id: ToolId, function: FunctionName, body: ToolCallRequest, request: Request, principal: CurrentPrincipal,
    catalog: Catalog, hosts: Hosts,
) -> Response:  # fmt: skip
    """The same call, its events delivered as they happen; ends with ``done`` carrying the ToolResult."""
    tool, user_valves = await catalog.for_call(principal, id)
    hosts.check_arguments(tool, function, body.arguments)
    settings = request.app.state.settings
    events = ExecutionLog(settings.tool_max_result_bytes + 2 * settings.max_stream_bytes)

    async def run() -> None:
        try:
            result = await _call(request, principal, tool, user_valves, function, body, events.publish)
            events.publish("done", result.model_dump_json())
        except Exception as exc:
            log.exception("tool call %s/%s failed", tool.id, function)
            events.publish("done", {"status": "error", "error": {"name": type(exc).__name__, "value": str(exc)}})
        finally:
            events.close()

    # The call goes on if the listener leaves (its result is audited); an event call then times out.
    hosts.spawn(run())

    async def stream() -> AsyncIterator[bytes]:
        async for event in events.subscribe(-1, keepalive_s=KEEPALIVE_S):
            if event is None:
                yield KEEPALIVE_COMMENT
            else:
                yield format_sse_event(data_str=event.data(), event=event.name, id=str(event.index))

    return EventSourceResponse(stream(), headers=_SSE_HEADERS)


@router.post("/id/{id}/calls/{call_id}/reply", status_code=204)
async def reply_event_call(
    id: ToolId,
    call_id: Annotated[str, Path(max_length=64)],
    body: EventCallReply,
    principal: CurrentPrincipal,
    hosts: Hosts,
) -> Response:
    """Answer a tool's ``__event_call__`` (the ``event_call`` event of a stream). 404 unless it is the caller's
    own call and still waiting."""
    answer: dict[str, Any] = {"error": body.error} if body.error is not None else {"value": body.value}
    hosts.reply(principal, id, call_id, answer)
    return Response(status_code=204)


@router.get("/id/{id}/build")
async def tool_build(id: ToolId, principal: CurrentPrincipal, hosts: Hosts) -> dict[str, Any]:
    """How installing the tool's frontmatter ``requirements`` goes (also while its create or update request is
    still waiting for it): ``building``, ``ready`` or ``failed``, with pip's last lines. The caller who started
    it and admins see it; 404 for anyone else, and when no build was started since the service started."""
    status = hosts.builds.get(id)
    if status is None or not (principal.is_admin or status.principal_id == principal.id):
        raise NotFound("build_not_found", f"no requirements build of tool {id!r} is known")
    return {
        "tool_id": status.tool_id,
        "status": status.status,
        "requirements": status.requirements,
        "log": list(status.lines),
        "started_at": status.started_at.isoformat(),
        "finished_at": status.finished_at.isoformat() if status.finished_at else None,
    }


# -- the OpenAPI tool-server face ---------------------------------------------------------------------------
# Open WebUI 0.12.4 fetches the document once for every user (get_tool_servers_data at start-up and on config
# saves, cached app-wide) with only the connection's bearer key, then calls each function as the chatting user
# (X-OpenWebUI-User-* headers). So names are given out over every tool, whoever asks, and only then filtered to
# what the caller may read: a name means the same function in the list and in every user's calls.
# Its client does not follow redirects (AIOHTTP_CLIENT_ALLOW_REDIRECTS is off by default): every route also
# answers with a trailing slash instead of redirecting.


async def _published(request: Request, principal: Principal) -> list[PublishedFunction]:
    catalog = _catalog(request)
    readable = {t.id for t in await catalog.usable(principal)}
    return [f for f in module_functions(await catalog.every(), set()) if f.tool_id in readable]


@face.get("/openapi.json", include_in_schema=False)
@face.get("/openapi.json/", include_in_schema=False)
async def face_openapi(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    """The OpenAPI document Open WebUI reads when this is added as a tool server (URL ``<base>/api/v1/tools/server``,
    path ``openapi.json``): one operation per function the caller may use."""
    functions = await _published(request, principal)
    return JSONResponse(openapi_document(functions, version=request.app.version))


@face.post("/{name}", include_in_schema=False)
@face.post("/{name}/", include_in_schema=False)
async def face_call(name: FunctionName, request: Request, principal: CurrentPrincipal) -> Response:
    """Call a function by its published name; the body is its arguments. The answer is what a tool server
    answers (see ``face_answer``): the value as JSON, an inline HTML embed, or the model's text; errors in this
    service's error shape (500 when the tool raised)."""
    functions = await _published(request, principal)
    fn = next((f for f in functions if f.name == name), None)
    if fn is None:
        raise NotFound("function_not_found", f"no function {name!r} is offered to you")
    try:
        arguments = json.loads(await request.body() or b"{}")
    except ValueError:
        return JSONResponse({"detail": "the body is not JSON", "error": "bad_json", "field": "body"}, 400)
    if not isinstance(arguments, dict):
        return JSONResponse({"detail": "the body must be a JSON object", "error": "bad_json", "field": "body"}, 400)
    tool, user_valves = await _catalog(request).for_call(principal, fn.tool_id)
    arguments = _without_display_file_extras(fn, arguments)
    body = ToolCallRequest(arguments=arguments, metadata=_metadata_from_headers(request))
    _hosts(request).check_arguments(tool, fn.function, body.arguments)
    result = await _call(request, principal, tool, user_valves, fn.function, body, shape=None)
    return face_response(result, fn.function, request.app.state.settings.tool_max_result_bytes)


def _without_display_file_extras(fn: PublishedFunction, arguments: dict[str, Any]) -> dict[str, Any]:
    # Open WebUI adds ``inline`` and ``page`` to any tool-server function named display_file (for its terminal
    # servers: add_terminal_display_file_inline_param), so a model may send them though the tool lacks them.
    if fn.name != "display_file":
        return arguments
    props = fn.spec.get("parameters", {}).get("properties", {})
    return {k: v for k, v in arguments.items() if k not in DISPLAY_FILE_EXTRAS or k in props}


def _metadata_from_headers(request: Request) -> dict[str, Any] | None:
    # Open WebUI forwards the chat and message ids as headers when ENABLE_FORWARD_USER_INFO_HEADERS is on.
    meta = {
        key: request.headers[header][:200]
        for key, header in (("chat_id", "x-openwebui-chat-id"), ("message_id", "x-openwebui-message-id"))
        if header in request.headers
    }
    return meta or None


def face_response(result: ToolResult, function: str, max_bytes: int) -> Response:
    """A ToolResult whose ``result`` is the tool's encoded value (unshaped) as a tool server's HTTP answer."""
    if result.status != "ok":
        error = result.error
        detail = f"{error.name}: {error.value}" if error else "the tool failed"
        return JSONResponse({"detail": detail, "error": "tool_error", "field": None}, 500)
    answer = face_answer(result.result, function, max_bytes)
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
