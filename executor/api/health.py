"""Liveness and readiness probes (outside /api). Without a key they say only ``{status}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from executor.access.principal import Principal
from executor.api.deps import optional_principal

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]) -> JSONResponse:
    """Ready to create sessions: the backend is usable, the database answers. With a valid key, also which
    jail and engine are in force and how full the host is; without one, only ``{status}`` (no versions or
    features for strangers)."""
    state = request.app.state
    sessions = state.sessions
    default = sessions.settings.backend
    body: dict[str, Any] = {
        "status": "ok",
        "backend": state.backends[default].describe(),
        "backends": {
            **{name: b.describe() for name, b in state.backends.items()},
            **{name: {"backend": name, "error": why} for name, why in sessions.unavailable.items()},
        },
    }
    try:
        await state.store.ping()
        body["database"] = "ok"
    except Exception as exc:  # report, never raise: this is a probe
        body["database"] = f"error: {type(exc).__name__}"
        body["status"] = "unavailable"
    body["egress"] = state.egress.describe()
    body["sessions"] = {
        "live": len(sessions.sessions),
        "pooled": {name: len(pool.ready) for name, pool in sessions.pools.items()},
        "max": sessions.settings.max_sessions,
    }
    code = 200 if body["status"] == "ok" else 503
    return JSONResponse(body if principal is not None else {"status": body["status"]}, status_code=code)
