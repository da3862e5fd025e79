"""The unified tool list: every function a chat backend can offer a model, from every source."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from executor.auth import CurrentPrincipal

router = APIRouter(prefix="/api/v1/tools", tags=["tools"])


@router.get("/specs")
async def tool_specs(request: Request, principal: CurrentPrincipal) -> list[dict[str, Any]]:
    """Function specs of every source, namespaced so names never collide.

    Tool-server functions are named ``{server_id}_{operationId}`` (cut to 64 characters with a hash
    suffix, as Open WebUI does); servers that fail are left out here and reported by
    ``GET /api/v1/tool_servers``.
    """
    return await request.app.state.tool_servers.all_functions(principal)
