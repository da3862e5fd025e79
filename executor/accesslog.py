"""One access-log line per HTTP request, on the logger ``executor.access``.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: that one copies every body through a task and a queue). Each line
says the method, the path, the status, the duration in milliseconds and who called (the principal id that
``executor.api.deps`` puts on ``request.state``, or ``-`` when the request was not authenticated). It never logs the
query string (it can carry a key, e.g. ``?api_key=``), headers, or bodies.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("executor.access")

# A path is client-controlled: cap what one line may carry.
MAX_PATH_CHARS = 512


def _printable(text: str) -> str:
    """The text with control and other non-printable characters escaped, so one request is always one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def request_path(scope: Scope) -> str:
    """The path as the client sent it (percent-escapes kept), without the query string, bounded in length."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    path = path.split("?", 1)[0]  # raw_path never has one per the ASGI spec; a server that adds it must not leak it
    if len(path) > MAX_PATH_CHARS:
        path = path[:MAX_PATH_CHARS] + "..."
    return _printable(path)


def principal_id(scope: Scope) -> str:
    """The authenticated caller's id, or ``-``. ``request.state`` is the dict at ``scope["state"]``."""
    state = scope.get("state")
    principal: Any = state.get("principal") if isinstance(state, dict) else None
    ident = getattr(principal, "id", None)
    return _printable(ident) if isinstance(ident, str) else "-"


class AccessLogMiddleware:
    """Logs ``METHOD path status duration_ms principal`` once per HTTP request, after the response has been sent
    (or the app failed: then the status is 500, as the server answers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        # The state dict exists before the routes run, so the principal a dependency stores there is seen here
        # (Starlette's Request.state writes into this same dict).
        scope.setdefault("state", {})
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status is None:
                status = 500  # what the server's error middleware answers
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000
            method, path, who = scope.get("method", "-"), request_path(scope), principal_id(scope)
            log.info(
                "%s %s %s %.1fms %s",
                method,
                path,
                status if status is not None else "-",  # "-": cancelled, or the client left before any answer
                ms,
                who,
                extra={
                    "http_method": method,
                    "http_path": path,
                    "http_status": status,
                    "duration_ms": round(ms, 1),
                    "principal": who,
                },
            )


class RedactWebsocketQuery(logging.Filter):
    """uvicorn logs every websocket handshake (``"WebSocket /path?query" [accepted]``) with its query string, and
    Jupyter clients put their token there (``?token=<key>``): the path is kept, the query is cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(record.msg, str) and '"WebSocket %s"' in record.msg and isinstance(args, tuple):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) and "?" in a else a for a in args)
        return True


def redact_websocket_queries() -> None:
    """Install :class:`RedactWebsocketQuery` on uvicorn's logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RedactWebsocketQuery) for f in logger.filters):
        logger.addFilter(RedactWebsocketQuery())
