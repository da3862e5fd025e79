"""API keys and principals.

A principal is derived from the key (a hash, never the key itself), so records and logs can name the owner
without holding a secret. With no keys configured every caller is the single principal ``anonymous``; the
CLI refuses to listen beyond loopback in that case.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from executor.errors import ApiError
from executor.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from EXECUTOR_API_KEYS")


class Principal(BaseModel):
    """Who is calling. ``id`` is stable for a key and safe to store and log."""

    id: str


ANONYMOUS = Principal(id="anonymous")


def principal_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def authenticate(settings: Settings, key: str | None) -> Principal:
    """Return the principal for a presented key, or raise 401."""
    if not settings.auth_enabled:
        return ANONYMOUS
    if key:
        for known in settings.api_keys:
            if hmac.compare_digest(key.encode(), known.encode()):
                return Principal(id=principal_id(known))
    raise ApiError(
        401,
        "unauthorized",
        "missing or invalid API key: send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    settings: Settings = request.app.state.settings
    return authenticate(settings, credentials.credentials if credentials else None)


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
