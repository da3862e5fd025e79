"""Network access from sandboxes: explain a decision without connecting, and each tool module's policy (admin)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from executor.api.deps import AdminPrincipal, Egress
from executor.tools.registry import ToolRegistry

router = APIRouter(prefix="/api/v1", tags=["egress"])

Mode = Literal["none", "allowlist", "public"]
ToolId = Annotated[str, Path(max_length=128, description="Tool id")]


class CheckRequest(BaseModel):
    url: str = Field(max_length=8192, description="An absolute http:// or https:// URL.")
    policy: Mode | None = Field(None, description="The policy to judge it under; the session default if omitted.")
    allow: list[str] | None = Field(
        None, max_length=1024, description="A host list to judge with instead of EXECUTOR_EGRESS_SANDBOX_ALLOWLIST."
    )


class CheckAnswer(BaseModel):
    decision: Literal["allowed", "refused"]
    rule: str = Field(description="The rule that decided: allow:<entry>, public, not-listed, policy:none, ...")
    reason: str
    host: str
    port: int
    addresses: list[str] = Field(description="What the name resolved to (what the proxy would connect to).")
    policy: dict[str, Any]


class ToolEgress(BaseModel):
    mode: Mode
    allow: list[str] = Field(default_factory=list, max_length=1024)


@router.post("/egress/check", response_model=CheckAnswer)
async def check(body: CheckRequest, egress: Egress, principal: AdminPrincipal) -> CheckAnswer:
    """What the egress proxy would decide for ``url``, after resolving its host; never connects to it."""
    policy, decision = await egress.check(body.url, body.policy, body.allow)
    return CheckAnswer(
        decision="allowed" if decision.allowed else "refused",
        rule=decision.rule,
        reason=decision.reason,
        host=decision.host,
        port=decision.port,
        addresses=list(decision.addresses),
        policy=policy.describe(),
    )


async def _tool_exists(request: Request, principal: Any, tool_id: str) -> None:
    registry: ToolRegistry = request.app.state.tools
    await registry.get(principal, tool_id)  # NotFound when there is no such tool


@router.get("/tools/id/{tool_id}/egress")
async def get_tool_egress(
    request: Request, tool_id: ToolId, egress: Egress, principal: AdminPrincipal
) -> dict[str, Any]:
    """The tool module's network policy (``source``: set for this tool, or the default)."""
    await _tool_exists(request, principal, tool_id)
    return await egress.tool_policy_view(tool_id)


@router.post("/tools/id/{tool_id}/egress")
async def set_tool_egress(
    request: Request, tool_id: ToolId, body: ToolEgress, egress: Egress, principal: AdminPrincipal
) -> dict[str, Any]:
    """Set the tool module's network policy; its live sandboxes use it from their next connection."""
    await _tool_exists(request, principal, tool_id)
    await egress.set_tool_policy(tool_id, body.mode, body.allow, principal.id)
    request.app.state.audit.record(
        "admin", "tool_egress", principal=principal, target=tool_id, detail={"mode": body.mode, "allow": body.allow}
    )
    return await egress.tool_policy_view(tool_id)
