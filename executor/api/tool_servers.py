"""OpenAPI tool servers: the connections config (Open WebUI's shape), their status, specs and calls."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from executor.auth import CurrentPrincipal
from executor.openapi.models import Connection, unmask
from executor.openapi.service import TOKEN_HEADER, ToolServerService
from executor.toolresult import ToolResult

router = APIRouter(prefix="/api/v1", tags=["tool servers"])


class ToolServerConnections(BaseModel):
    """Open WebUI's ``/configs/tool_servers`` body."""

    model_config = ConfigDict(populate_by_name=True)
    TOOL_SERVER_CONNECTIONS: list[Connection] = Field(default_factory=list)


class CallerIdentity(BaseModel):
    id: str | None = None
    name: str | None = None
    email: str | None = None
    role: str | None = None


class CallMetadata(BaseModel):
    chat_id: str | None = None
    message_id: str | None = None
    model_id: str | None = None


class ToolServerCall(BaseModel):
    """Arguments of the call, and who it is for (fills header templates like ``{{USER_ID}}``)."""

    arguments: dict[str, Any] = Field(default_factory=dict)
    user: CallerIdentity | None = None
    metadata: CallMetadata | None = None


def _service(request: Request) -> ToolServerService:
    return request.app.state.tool_servers


def _masked(service: ToolServerService) -> dict[str, Any]:
    return {"TOOL_SERVER_CONNECTIONS": [c.masked() for c in service.connections]}


@router.get("/configs/tool_servers")
async def get_connections(request: Request, _principal: CurrentPrincipal) -> dict[str, Any]:
    """The saved connections, keys and secret header values masked."""
    return _masked(_service(request))


@router.post("/configs/tool_servers")
async def set_connections(
    request: Request, form: ToolServerConnections, _principal: CurrentPrincipal
) -> dict[str, Any]:
    """Replace the connections; a masked key sent back unchanged keeps the saved one."""
    service = _service(request)
    await service.save(unmask(form.TOOL_SERVER_CONNECTIONS, service.connections))
    return _masked(service)


@router.post("/configs/tool_servers/verify")
async def verify_connection(request: Request, conn: Connection, _principal: CurrentPrincipal) -> dict[str, Any]:
    """Fetch and check one connection without saving it; a 400 body names what is wrong."""
    service = _service(request)
    (conn,) = unmask([conn], service.connections)
    return await service.verify(conn)


@router.get("/tool_servers")
async def list_tool_servers(request: Request, principal: CurrentPrincipal) -> list[dict[str, Any]]:
    """Every connection the caller may use, with its status (ok, error, disabled, unsupported)."""
    return await _service(request).status(principal)


@router.get("/tool_servers/{server_id}/specs")
async def tool_server_specs(request: Request, server_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    """The OpenAI-style function specs of one tool server."""
    return await _service(request).specs(server_id, principal)


@router.post("/tool_servers/{server_id}/call/{operation_id}", response_model=ToolResult)
async def call_tool_server(
    request: Request,
    server_id: str,
    operation_id: str,
    principal: CurrentPrincipal,
    body: Annotated[ToolServerCall, Body()] = ToolServerCall(),
    token: Annotated[
        str | None,
        Header(
            alias=TOKEN_HEADER,
            description="The end user's token, forwarded as a bearer token to servers whose auth_type is "
            "session, system_oauth or oauth_2.1.",
        ),
    ] = None,
) -> ToolResult:
    """Call one operation with the connection's credentials."""
    # Template values for header placeholders such as {{USER_ID}}; empty ones are left out.
    fields: dict[str, str | None] = {}
    if body.user:
        fields |= {
            "USER_ID": body.user.id,
            "USER_NAME": body.user.name,
            "USER_EMAIL": body.user.email,
            "USER_ROLE": body.user.role,
        }
    if body.metadata:
        fields |= {
            "CHAT_ID": body.metadata.chat_id,
            "MESSAGE_ID": body.metadata.message_id,
            "MODEL_ID": body.metadata.model_id,
        }
    identity = {k: v for k, v in fields.items() if v}
    return await _service(request).call(
        server_id, operation_id, body.arguments, principal, token=token, identity=identity
    )
