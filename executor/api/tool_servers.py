"""OpenAPI tool servers: the connections config (Open WebUI's shape, admins only), their status, specs and calls."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException  # what FastAPI raises; fastapi.HTTPException subclasses it

from executor.access import identity as headers
from executor.access.principal import EndUser, Principal
from executor.api.deps import AdminPrincipal, CurrentPrincipal
from executor.errors import Invalid
from executor.openapi.models import Connection, server_id, unmask
from executor.openapi.service import TOKEN_HEADER, ToolServerService
from executor.toolresult import ToolResult


class NamedBodyErrors(APIRoute):
    """FastAPI answers a body it cannot parse with a bare 400 ("There was an error parsing the body"); here the
    likely cause is a document nested deeper than Python's JSON parser allows (an inline spec, say): name it.

    Only the failure path reads the body again; a request FastAPI parsed costs nothing extra.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code != 400:
                    raise
                try:
                    json.loads(await request.body())
                except RecursionError:
                    raise Invalid(
                        "body_too_deep",
                        "the request body nests too deep to parse (Python's JSON parser stops near 1000 levels; "
                        "a spec may nest at most 100)",
                        field="body",
                    ) from None
                except ValueError as bad:
                    raise Invalid("bad_json", f"the request body is not valid JSON: {bad}", field="body") from None
                raise

        return route


router = APIRouter(prefix="/api/v1", tags=["tool servers"], route_class=NamedBodyErrors)


class ToolServerConnections(BaseModel):
    """Open WebUI's ``/configs/tool_servers`` body."""

    model_config = ConfigDict(populate_by_name=True)
    TOOL_SERVER_CONNECTIONS: list[Connection] = Field(default_factory=list, max_length=1000)


class CallerIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    email: str | None = Field(None, max_length=256)
    role: str | None = Field(None, max_length=32)


class CallMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chat_id: str | None = Field(None, max_length=256)
    message_id: str | None = Field(None, max_length=256)
    model_id: str | None = Field(None, max_length=256)


class ToolServerCall(BaseModel):
    """The arguments of the call and its context. Unknown top-level keys are refused (422 names them): an
    argument put beside ``arguments`` instead of inside it would otherwise be dropped without a word."""

    model_config = ConfigDict(extra="forbid")
    arguments: dict[str, Any] = Field(default_factory=dict)
    user: CallerIdentity | None = Field(
        None, description="Who the call is for (fills {{USER_*}} header templates); only from a key trusted to "
        "forward identity, and only when the request's headers named no end user."
    )  # fmt: skip
    metadata: CallMetadata | None = None


def _service(request: Request) -> ToolServerService:
    service: ToolServerService = request.app.state.tool_servers
    return service


def _masked(service: ToolServerService) -> dict[str, Any]:
    return {"TOOL_SERVER_CONNECTIONS": [c.masked() for c in service.connections]}


@router.get("/configs/tool_servers")
async def get_connections(request: Request, _admin: AdminPrincipal) -> dict[str, Any]:
    """The saved connections, keys and secret header values masked (admin keys only)."""
    return _masked(_service(request))


@router.post("/configs/tool_servers")
async def set_connections(request: Request, form: ToolServerConnections, admin: AdminPrincipal) -> dict[str, Any]:
    """Replace the connections (admin keys only). A masked secret sent back keeps the saved one only while the
    connection's url, path, spec_type and auth_type are unchanged; otherwise 400 names the field to enter."""
    service = _service(request)
    before = {server_id(c, i) for i, c in enumerate(service.connections)}
    await service.save(unmask(form.TOOL_SERVER_CONNECTIONS, service.connections))
    after = [server_id(c, i) for i, c in enumerate(service.connections)]
    request.app.state.access.audit.record(
        "admin", "tool_servers.save", principal=admin, target="TOOL_SERVER_CONNECTIONS",
        detail={"ids": after, "added": sorted(set(after) - before), "removed": sorted(before - set(after))},
    )  # fmt: skip
    return _masked(service)


@router.post("/configs/tool_servers/verify")
async def verify_connection(request: Request, conn: Connection, _admin: AdminPrincipal) -> dict[str, Any]:
    """Fetch and check one connection without saving it (admin keys only); a 400 body names what is wrong."""
    service = _service(request)
    (conn,) = unmask([conn], service.connections, prefix="")
    return await service.verify(conn)


@router.get("/tool_servers")
async def list_tool_servers(request: Request, principal: CurrentPrincipal) -> list[dict[str, Any]]:
    """Every connection the caller's grants allow, with its status (ok, error, disabled, unsupported)."""
    return await _service(request).status(principal)


@router.get("/tool_servers/{server_id}/specs")
async def tool_server_specs(request: Request, server_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    """The OpenAI-style function specs of one tool server (its function_name_filter_list applied)."""
    return await _service(request).specs(server_id, principal)


def template_values(request: Request, principal: Principal, body: ToolServerCall) -> dict[str, str]:
    """Values for header placeholders such as ``{{USER_ID}}``: the authenticated end user first."""
    fields: dict[str, str | None] = {}
    forwarded = principal.forward_identity
    user: EndUser | CallerIdentity | None = principal.end_user or (body.user if forwarded else None)
    if user is not None:
        fields |= {"USER_ID": user.id, "USER_NAME": user.name, "USER_EMAIL": user.email, "USER_ROLE": user.role}
    meta = body.metadata or CallMetadata()
    fields |= {
        "CHAT_ID": meta.chat_id or (request.headers.get(headers.CHAT_ID) if forwarded else None),
        "MESSAGE_ID": meta.message_id or (request.headers.get(headers.MESSAGE_ID) if forwarded else None),
        "MODEL_ID": meta.model_id,
    }
    return {k: v for k, v in fields.items() if v}


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
) -> Response:
    """Call one operation with the connection's credentials, at ``{connection url}{operation path}``."""
    result = await _service(request).call(
        server_id,
        operation_id,
        body.arguments,
        principal,
        token=token,
        identity=template_values(request, principal, body),
    )
    # Dumped once, here: FastAPI would validate the model it was just given again, then encode it.
    return Response(result.model_dump_json(), media_type="application/json")
