"""Tool routes: Open WebUI 0.12.4's tool-module routes (``/api/v1/tools/...``) and the unified function list.

Paths, bodies and answers mirror Open WebUI's router so its clients work unchanged; statuses follow this
service's one error shape (404 for a tool the caller may not read, 403 for one it may read but not change, 400
naming the field otherwise). No trailing-slash redirects: ``/api/v1/tools`` and ``/api/v1/tools/`` both list.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request

from executor.api.deps import AdminPrincipal, CurrentPrincipal
from executor.openapi.service import ToolServerService
from executor.tools.models import (
    LoadedTool,
    LoadUrlForm,
    ToolAccessGrantsForm,
    ToolAccessResponse,
    ToolForm,
    ToolModel,
    ToolResponse,
    ToolUserResponse,
)
from executor.tools.published import PublishedFunction, module_functions
from executor.tools.registry import ToolRegistry

router = APIRouter(prefix="/api/v1/tools", tags=["tools"])
ToolId = Annotated[str, Path(max_length=128, description="The tool's id (lowercase identifier).")]
ValvesBody = Annotated[dict[str, Any], Body(description="Field values; null drops a field; the mask keeps a secret.")]


def _registry(request: Request) -> ToolRegistry:
    registry: ToolRegistry = request.app.state.tools
    return registry


@router.get("/specs")
async def tool_specs(
    request: Request,
    principal: CurrentPrincipal,
    tool_ids: Annotated[
        list[str] | None,
        Query(
            max_length=100,
            description="Open WebUI's tool ids, in the order names are given out: a tool module's id, "
            "server:ID, server:openapi:ID; every usable tool module, then every usable server, if omitted.",
        ),
    ] = None,
) -> list[dict[str, Any]]:
    """Function specs of every source the caller may use (tool modules and tool-server operations), each
    tagged with its ``kind`` and how to call it, named as Open WebUI's ``get_tools`` names them.

    A function keeps its bare name; only a name an earlier tool or server already took is prefixed
    ``{tool_id}_`` / ``{server_id}_``. Each connection's ``config.function_name_filter_list`` is honoured.
    Servers that fail are left out here and reported by ``GET /api/v1/tool_servers``.
    """
    service: ToolServerService = request.app.state.tool_servers
    modules = {t.id: t for t in await _registry(request).usable(principal)}
    taken: set[str] = set()
    out: list[dict[str, Any]] = []
    if tool_ids is None:
        out += [_module_entry(f) for f in module_functions(sorted(modules.values(), key=lambda t: t.id), taken)]
        return out + await service.all_functions(principal, None, taken)
    for tool_id in tool_ids:
        if tool_id.startswith("server:"):
            out += await service.all_functions(principal, [tool_id], taken)
        elif tool_id in modules:
            out += [_module_entry(f) for f in module_functions([modules[tool_id]], taken)]
    return out


def _module_entry(fn: PublishedFunction) -> dict[str, Any]:
    return {
        "name": fn.name,
        "kind": "tool_module",
        "tool_id": fn.tool_id,
        "function": fn.function,
        "call": f"/api/v1/tools/id/{fn.tool_id}/call/{fn.function}",
        "spec": fn.spec,
    }


@router.get("/", response_model=list[ToolUserResponse])
async def list_tools(request: Request, principal: CurrentPrincipal) -> list[ToolUserResponse]:
    """Tool modules the caller may read (owner, a grant, or admin), newest change first, without source."""
    return await _registry(request).list_tools(principal)


@router.get("", response_model=list[ToolUserResponse], include_in_schema=False)
async def list_tools_no_slash(request: Request, principal: CurrentPrincipal) -> list[ToolUserResponse]:
    return await _registry(request).list_tools(principal)


@router.get("/list", response_model=list[ToolAccessResponse])
async def list_tools_access(request: Request, principal: CurrentPrincipal) -> list[ToolAccessResponse]:
    """The same tools, each with ``write_access`` (Open WebUI's ``GET /tools/list``)."""
    return await _registry(request).list_access(principal)


@router.post("/create", response_model=ToolResponse)
async def create_tool(request: Request, form: ToolForm, principal: CurrentPrincipal) -> ToolResponse:
    """Register a tool file (admin keys, or keys allowed to create tools). The id is lowercased and must be an
    identifier. The file is imported in a short-lived sandbox for its specs and Valves schemas; when it does not
    load, 400 carries the last traceback lines and nothing is stored."""
    return await _registry(request).create(principal, form)


@router.post("/load/url", response_model=LoadedTool)
async def load_tool_from_url(request: Request, form: LoadUrlForm, admin: AdminPrincipal) -> LoadedTool:
    """Fetch a tool file for a create form (admin keys only): GitHub page URLs become raw-file URLs, the fetch
    goes through the outbound policy (``EXECUTOR_EGRESS_ALLOWLIST``) and is capped at ``EXECUTOR_TOOL_MAX_BYTES``."""
    return await _registry(request).load_url(str(form.url))


@router.get("/id/{tool_id}", response_model=ToolAccessResponse)
async def get_tool(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> ToolAccessResponse:
    """One tool, with ``write_access``; ``content`` only for those who may change it."""
    return await _registry(request).get(principal, tool_id)


@router.post("/id/{tool_id}/update", response_model=ToolModel)
async def update_tool(request: Request, tool_id: ToolId, form: ToolForm, principal: CurrentPrincipal) -> ToolModel:
    """Change a tool (write access: owner, a write grant, or admin; new code also needs the right to create
    tools). New code is extracted again and the tool's sandboxes are closed; ``access_grants`` are ignored here,
    as in Open WebUI (use ``/access/update``)."""
    return await _registry(request).update(principal, tool_id, form)


@router.post("/id/{tool_id}/access/update", response_model=ToolModel)
async def update_tool_access(
    request: Request, tool_id: ToolId, form: ToolAccessGrantsForm, principal: CurrentPrincipal
) -> ToolModel:
    """Replace the tool's access grants (write access)."""
    return await _registry(request).update_access(principal, tool_id, form.access_grants)


@router.delete("/id/{tool_id}/delete", response_model=bool)
async def delete_tool(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> bool:
    """Delete a tool with its valves, every user's user valves and its egress policy (write access)."""
    deleted = await _registry(request).delete(principal, tool_id)
    if deleted:
        await request.app.state.egress.forget_tool(tool_id)
    return deleted


@router.get("/id/{tool_id}/valves", response_model=dict[str, Any] | None)
async def get_valves(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> dict[str, Any]:
    """The stored valves (write access), secrets masked."""
    return await _registry(request).valves(principal, tool_id)


@router.get("/id/{tool_id}/valves/spec", response_model=dict[str, Any] | None)
async def get_valves_spec(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> dict[str, Any] | None:
    """The ``Valves`` JSON schema (write access), null when the tool has none."""
    return await _registry(request).valves_spec(principal, tool_id, "valves")


@router.post("/id/{tool_id}/valves/update", response_model=dict[str, Any] | None)
async def update_valves(
    request: Request, tool_id: ToolId, form: ValvesBody, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Validate and store the valves (write access); returns them, secrets masked."""
    return await _registry(request).update_valves(principal, tool_id, "valves", form)


@router.get("/id/{tool_id}/valves/user", response_model=dict[str, Any] | None)
async def get_user_valves(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> dict[str, Any]:
    """The caller's own user valves (read access), secrets masked. The end user is the forwarded identity."""
    return await _registry(request).user_valves(principal, tool_id)


@router.get("/id/{tool_id}/valves/user/spec", response_model=dict[str, Any] | None)
async def get_user_valves_spec(request: Request, tool_id: ToolId, principal: CurrentPrincipal) -> dict[str, Any] | None:
    """The ``UserValves`` JSON schema (read access), null when the tool has none."""
    return await _registry(request).valves_spec(principal, tool_id, "user_valves")


@router.post("/id/{tool_id}/valves/user/update", response_model=dict[str, Any] | None)
async def update_user_valves(
    request: Request, tool_id: ToolId, form: ValvesBody, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Validate and store the caller's own user valves (read access); returns them, secrets masked."""
    return await _registry(request).update_valves(principal, tool_id, "user_valves", form)
