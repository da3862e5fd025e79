"""FastAPI dependencies: who is calling (``CurrentPrincipal``, ``AdminPrincipal``), and the app's services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from executor.access.principal import Principal
from executor.access.service import Access
from executor.egress.service import EgressService
from executor.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An API key (EXECUTOR_API_KEYS, EXECUTOR_ADMIN_API_KEYS, or "
                     "`executor keys create`); or Open WebUI's session token when the key is in X-API-Key")  # fmt: skip
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key, when Authorization carries "
                        "an Open WebUI session token (its connection auth_type 'session')")  # fmt: skip


async def get_access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKey = Annotated[str | None, Depends(_api_key)]


def _credentials(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> tuple[str | None, str | None]:
    """The key presented, and Open WebUI's session token when the key came in X-API-Key beside a bearer."""
    token = bearer.credentials if bearer else None
    session_token = token if api_key and token and token != api_key else None
    return api_key or token, session_token


async def authenticate(conn: HTTPConnection, presented: str | None, session_token: str | None) -> Principal:
    """The principal of a request or websocket presenting this key (Unauthenticated when it is missing, wrong
    or revoked, or a token is bad). Every face checks keys through here, whatever header carries them."""
    access: Access = conn.app.state.access
    key = await access.key(presented)
    if key is not None:
        conn.state.key_id = key.id  # so a refusal after this point is audited against the key
    principal = access.principal(key, conn.headers, session_token)
    conn.state.principal = principal
    return principal


async def require_principal(request: Request, bearer: Bearer, api_key: ApiKey) -> Principal:
    """Authenticate the request (401 when the key is missing, wrong or revoked, or a token is bad)."""
    presented, session_token = _credentials(bearer, api_key)
    return await authenticate(request, presented, session_token)


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    """403 unless the caller holds an admin key (and, behind one, is an admin end user)."""
    if not principal.is_admin:
        raise Forbidden("admin_required", "this needs an admin key (EXECUTOR_ADMIN_API_KEYS or role admin)")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]


async def optional_principal(request: Request, bearer: Bearer, api_key: ApiKey) -> Principal | None:
    """The caller's key as a principal when it is good, None otherwise (for probes that say less to strangers)."""
    access: Access = request.app.state.access
    presented, _ = _credentials(bearer, api_key)
    try:
        key = await access.key(presented)
    except Unauthenticated:
        return None
    return access.principal(key, {}, None)


async def get_egress(request: Request) -> EgressService:
    egress: EgressService = request.app.state.egress
    return egress


Egress = Annotated[EgressService, Depends(get_egress)]
