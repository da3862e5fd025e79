"""The one error shape of the API: ``{"detail": message, "error": code, "field": name|null}``.

FastAPI's own 422 validation body (``{"detail": [{loc, msg, type}]}``) is kept as is: it already names the
field, and clients built on FastAPI expect it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


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


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"{what} {ident!r} does not exist")


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        {"detail": exc.message, "error": exc.code, "field": exc.field},
        status_code=exc.status,
        headers=exc.headers,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _handle)
