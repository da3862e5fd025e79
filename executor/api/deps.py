"""FastAPI dependencies: who is calling (``CurrentPrincipal``, ``AdminPrincipal``), and the app's services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from executor.access.principal import Principal
from executor.access.service import Access
from executor.errors import Forbidden

_bearer = HTTPBearer(auto_error=False, description="An API key (EXECUTOR_API_KEYS, EXECUTOR_ADMIN_API_KEYS, or "
                     "`executor keys create`); or Open WebUI's session token when the key is in X-API-Key")  # fmt: skip
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key, when Authorization carries "
                        "an Open WebUI session token (its connection auth_type 'session')")  # fmt: skip


async def get_access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


async def require_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """Authenticate the request (401 when the key is missing, wrong or revoked, or a token is bad)."""
    access: Access = request.app.state.access
    token = bearer.credentials if bearer else None
    key = await access.key(api_key or token)
    if key is not None:
        request.state.key_id = key.id  # so a refusal after this point is audited against the key
    session_token = token if api_key and token and token != api_key else None
    principal = access.principal(key, request.headers, session_token)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    """403 unless the caller holds an admin key (and, behind one, is an admin end user)."""
    if not principal.is_admin:
        raise Forbidden("admin_required", "this needs an admin key (EXECUTOR_ADMIN_API_KEYS or role admin)")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]


async def optional_principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal | None:
    """The principal when credentials come and are good, None otherwise (for probes that say less to strangers)."""
    access: Access = request.app.state.access
    token = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else None
    await access.refresh()
    if not access.ring.auth_enabled:
        return access.principal(None, {}, None)
    presented = x_api_key or token
    key = access.ring.find(presented) if presented else None
    return access.principal(key, {}, None) if key is not None else None
