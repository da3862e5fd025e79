"""The unified tool list: every function a chat backend can offer a model, from every source."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from executor.api.deps import CurrentPrincipal
from executor.openapi.service import ToolServerService

router = APIRouter(prefix="/api/v1/tools", tags=["tools"])


@router.get("/specs")
async def tool_specs(
    request: Request,
    principal: CurrentPrincipal,
    tool_ids: Annotated[
        list[str] | None,
        Query(
            max_length=100,
            description="Open WebUI's tool ids (server:ID, server:openapi:ID), in the order "
            "names are given out; all usable servers if omitted.",
        ),
    ] = None,
) -> list[dict[str, Any]]:
    """Function specs of every source the caller may use, named as Open WebUI's ``get_tools`` names them.

    A function keeps its bare ``operationId``; only a name already taken by an earlier server is prefixed
    ``{server_id}_``. Each connection's ``config.function_name_filter_list`` is honoured. Servers that fail are
    left out here and reported by ``GET /api/v1/tool_servers``.
    """
    service: ToolServerService = request.app.state.tool_servers
    return await service.all_functions(principal, tool_ids)
