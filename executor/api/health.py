"""Liveness and readiness probes (outside /api, unauthenticated, nothing secret in them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to create sessions: the backend is usable (and which jail is in force), the database answers."""
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
    body["sessions"] = {
        "live": len(sessions.sessions),
        "pooled": {name: len(pool.ready) for name, pool in sessions.pools.items()},
        "max": sessions.settings.max_sessions,
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
