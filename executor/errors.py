"""The one error shape of the API: ``{"detail": message, "error": code, "field": name|null}`` (plus
``"traceback": [lines]`` when the error is about code that failed to load).

The domain raises :class:`DomainError` subclasses (no HTTP in them); :func:`install` maps each kind to its status
once, here at the edge. ``ApiError`` (a status chosen by the raiser) remains for older code paths.

FastAPI's own 422 validation body (``{"detail": [{loc, msg, type}]}``) is kept as is: it already names the
field, and clients built on FastAPI expect it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Something the caller asked for cannot be done; ``code`` says why in one word."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Invalid(DomainError):
    """The request names something impossible (HTTP 400)."""


class Unauthenticated(DomainError):
    """No valid credential, or an identity that could not be verified (HTTP 401)."""


class Forbidden(DomainError):
    """A valid caller without the right to do this (HTTP 403)."""


class NotFound(DomainError):
    """Does not exist, or is not the caller's to see (HTTP 404)."""


class Conflict(DomainError):
    """The thing exists but is in the wrong state, or the name is taken (HTTP 409)."""


class Unprocessable(DomainError):
    """Well-formed, but an argument does not fit what the target declares (HTTP 422): a missing required tool
    argument, say. Kept apart from :class:`Invalid` because clients and the Open WebUI parity goldens expect 422."""


class TooLarge(DomainError):
    """The request or what it would produce is over a stated limit (HTTP 413)."""


class BadGateway(DomainError):
    """A remote server the service called failed or answered something unusable (HTTP 502)."""


class Unavailable(DomainError):
    """The service cannot do this right now (a backend is down, a sandbox failed to start) (HTTP 503)."""


class RateLimited(DomainError):
    """Too many requests; ``retry_after_s`` says when to come back (HTTP 429)."""

    def __init__(self, code: str, message: str, *, retry_after_s: int, field: str | None = None) -> None:
        super().__init__(code, message, field=field)
        self.retry_after_s = retry_after_s


STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unprocessable: 422,
    RateLimited: 429,
    BadGateway: 502,
    Unavailable: 503,
}


class ApiError(Exception):
    """Raised anywhere below the routers; turned into a JSON response with the given status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def _body(code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"detail": message, "error": code, "field": field}


def _audit_refusal(request: Request, status: int, code: str) -> None:
    # Refusals are audited where they become HTTP, so every route is covered without each one remembering.
    audit = getattr(request.app.state, "audit", None)
    if audit is None or status not in (401, 403):
        return
    audit.record(
        "refused",
        code,
        principal=getattr(request.state, "principal", None),
        key_id=getattr(request.state, "key_id", None),
        target=f"{request.method} {request.url.path}"[:255],
        status=status,
        detail={"client": request.client.host if request.client else None},
    )


async def _handle_api(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    _audit_refusal(request, exc.status, exc.code)
    return JSONResponse(_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=exc.headers)


async def _handle_domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 400)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    _audit_refusal(request, status, exc.code)
    body = _body(exc.code, exc.message, exc.field)
    # An error about code that failed to load (executor.tools.records.ToolLoadError) carries its last lines.
    traceback = getattr(exc, "traceback", None)
    if isinstance(traceback, list) and traceback:
        body["traceback"] = [str(line) for line in traceback]
    return JSONResponse(body, status_code=status, headers=headers or None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _handle_api)
    app.add_exception_handler(DomainError, _handle_domain)
