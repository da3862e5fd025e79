"""Sessions, executions and files: ``/api/v1/sessions`` and the one-shot ``/api/v1/execute``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO, Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from executor import workfiles
from executor.api.deps import CurrentPrincipal, Egress
from executor.api.models import (
    ExecutionAccepted,
    ExecutionRequest,
    FileEntry,
    OneShotRequest,
    SessionCreate,
    SessionInfo,
)
from executor.errors import ApiError, Conflict, DomainError, Forbidden, Invalid, NotFound, TooLarge
from executor.results import ExecutionResult
from executor.sessions import Execution, LogEvent, SessionManager

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["sessions"])

# Seconds of silence after which an event stream sends a keep-alive comment (proxies drop idle streams).
KEEPALIVE_S = 15.0
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def get_manager(request: Request) -> SessionManager:
    # async: FastAPI runs sync dependencies in its threadpool, a thread hop on every request.
    manager: SessionManager = request.app.state.sessions
    return manager


Manager = Annotated[SessionManager, Depends(get_manager)]
SessionId = Annotated[str, Path(max_length=64, description="Session id")]
ExecutionId = Annotated[str, Path(max_length=64, description="Execution id")]


def _json(raw: str, status_code: int = 200) -> Response:
    # Already validated and dumped once: skip FastAPI's re-validation and re-serialization of the response.
    return Response(raw, status_code=status_code, media_type="application/json")


# -- sessions -------------------------------------------------------------------------------------------


@router.post("/sessions", status_code=201, response_model=SessionInfo)
async def create_session(
    principal: CurrentPrincipal,
    manager: Manager,
    egress: Egress,
    body: Annotated[SessionCreate | None, Body(description="Optional: no body is the same as {}.")] = None,
) -> SessionInfo:
    """Start a sandboxed kernel. 429 with Retry-After when the host or the caller is at capacity."""
    body = body or SessionCreate()
    policy = None
    if body.egress is not None or body.egress_allow is not None:
        policy = egress.session_policy(body.egress, body.egress_allow, admin=principal.role == "admin")
    session = await manager.create(principal.id, body.to_domain(policy))
    return SessionInfo.of(session.view())


@router.get("/sessions", response_model=list[SessionInfo])
async def list_sessions(
    principal: CurrentPrincipal,
    manager: Manager,
    all: Annotated[bool, Query(description="Every principal's live sessions (admin keys only).")] = False,
) -> list[SessionInfo]:
    """Your sessions: live ones, and dead ones until they are removed (yours: this key's, or this end user's
    behind it). After a service restart the sessions that were live are listed ``dead`` (``service restarted``)
    until their ttl, with their results and files readable."""
    if all and not principal.is_admin:
        raise Forbidden("admin_required", "all=true needs an admin key", field="all")
    return [SessionInfo.of(v) for v in await manager.list_everywhere(None if all else principal.id)]


@router.get("/sessions/{session_id}", response_model=SessionInfo)
async def get_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> SessionInfo:
    """One of your sessions (admins: anyone's)."""
    return SessionInfo.of(await manager.view(None if principal.is_admin else principal.id, session_id))


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> Response:
    """Kill the kernel and every process it started, and remove the work dir. Admins may delete any session."""
    await manager.delete(None if principal.is_admin else principal.id, session_id)
    return Response(status_code=204)


@router.post("/sessions/{session_id}/restart", response_model=SessionInfo)
async def restart_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> SessionInfo:
    """A fresh kernel in the same sandbox, as Jupyter's restart: variables are gone, files stay. Also brings a
    dead session back (never done silently). 409 while a cell runs or waits, or a restart is under way."""
    return SessionInfo.of((await manager.restart(principal.id, session_id)).view())


# -- executions -----------------------------------------------------------------------------------------


def _wants_events(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


@router.post(
    "/sessions/{session_id}/executions",
    response_model=ExecutionResult,
    responses={
        200: {
            "description": "The finished result; or, when the request accepts text/event-stream, the "
            "execution's events as they happen (the same stream as GET .../events)",
            "content": {"text/event-stream": {}},
        },
        202: {"model": ExecutionAccepted, "description": "Queued (wait=false)"},
    },
)
async def execute(
    session_id: SessionId, body: ExecutionRequest, request: Request, principal: CurrentPrincipal, manager: Manager
) -> Response:
    """Run a cell. Cells of one session run one at a time, in submission order. With
    ``Accept: text/event-stream`` the answer is the event stream itself: the first output one round trip away."""
    session = await manager.find(principal.id, session_id)
    ex = manager.submit(session, body.code, body.timeout_s)
    if _wants_events(request):
        return _event_stream(ex, None)
    if not body.wait:
        accepted = ExecutionAccepted(id=ex.id, session_id=session.id, status=ex.status)
        return _json(accepted.model_dump_json(), 202)
    await ex.done.wait()
    return _json(ex.answer_json())


async def _execution(manager: SessionManager, owner: str, session_id: str, execution_id: str) -> Execution:
    found = await manager.get_execution(owner, session_id, execution_id)
    if isinstance(found, str):
        raise Conflict("execution_finished", "this execution finished long ago and can no longer be changed")
    return found


@router.get("/sessions/{session_id}/executions/{execution_id}", response_model=ExecutionResult)
async def get_execution(
    session_id: SessionId, execution_id: ExecutionId, principal: CurrentPrincipal, manager: Manager
) -> Response:
    """Poll: the final result once done, else the status and what has arrived so far."""
    found = await manager.get_execution(principal.id, session_id, execution_id)
    return _json(found if isinstance(found, str) else found.answer_json())


def _event_stream(ex: Execution, last_event_id: int | None) -> EventSourceResponse:
    return EventSourceResponse(_sse(ex, last_event_id), headers=_SSE_HEADERS)


async def _sse(ex: Execution, last_event_id: int | None) -> AsyncIterator[bytes]:
    # One encoder for GET .../events and POST .../executions: the same events, ids and keep-alives.
    async for event in ex.log.subscribe(-1 if last_event_id is None else last_event_id, keepalive_s=KEEPALIVE_S):
        yield KEEPALIVE_COMMENT if event is None else _encode(event)


def _encode(event: LogEvent) -> bytes:
    return format_sse_event(
        data_str=event.data(), event=event.name, id=None if event.index is None else str(event.index)
    )


@router.get(
    "/sessions/{session_id}/executions/{execution_id}/events",
    response_class=Response,
    responses={
        200: {
            "description": "Server-Sent Events: status, stream, output, result, error, clear, truncated (the "
            "execution's events passed their cap), dropped (this stream fell too far behind: reconnect with "
            "Last-Event-ID), done",
            "content": {"text/event-stream": {}},
        }
    },
)
async def execution_events(
    session_id: SessionId,
    execution_id: ExecutionId,
    principal: CurrentPrincipal,
    manager: Manager,
    last_event_id: Annotated[int | None, Header(ge=-1)] = None,
) -> Response:
    """Stream an execution as it happens. A late subscriber first gets everything that already happened
    (or only what follows ``Last-Event-ID``); the stream ends with a ``done`` event carrying the result."""
    found = await manager.get_execution(principal.id, session_id, execution_id)
    if isinstance(found, str):
        return EventSourceResponse(iter([format_sse_event(data_str=found, event="done", id="0")]))
    return _event_stream(found, last_event_id)


@router.post("/sessions/{session_id}/executions/{execution_id}/cancel", response_model=ExecutionResult)
async def cancel_execution(
    session_id: SessionId, execution_id: ExecutionId, principal: CurrentPrincipal, manager: Manager
) -> Response:
    """Interrupt a running cell or drop a queued one; it ends ``cancelled`` and the session stays usable. A cell
    that ignores interrupts for ``EXECUTOR_CANCEL_GRACE_S`` is killed: ``cancelled``, and the session dead."""
    session = await manager.find(principal.id, session_id)
    ex = await _execution(manager, principal.id, session_id, execution_id)
    await manager.cancel(session, ex)
    return _json(ex.answer_json())


# -- files ----------------------------------------------------------------------------------------------


def _clean(raw: str) -> PurePosixPath:
    try:
        return workfiles.clean_path(raw)
    except workfiles.UnsafePath as exc:
        raise Invalid("bad_path", f"path {raw!r}: {exc}", field="path") from None


def _file_error(raw: str, exc: Exception) -> DomainError | ApiError:
    if isinstance(exc, workfiles.UnsafePath):
        return Invalid("bad_path", f"path {raw!r}: {exc}", field="path")
    if isinstance(exc, workfiles.NotAFile | IsADirectoryError):
        return Invalid("not_a_file", f"path {raw!r} is not a regular file", field="path")
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return NotFound("file_not_found", f"file {raw!r} does not exist")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return TooLarge("file_too_large", "the file is larger than the sandbox's file-size limit")
    log.warning("file access %r failed", raw, exc_info=exc)
    # No domain kind fits a failure of the service's own file access: a 500 that says what it could not do.
    return ApiError(500, "file_error", f"could not access {raw!r}")


@router.get("/sessions/{session_id}/files", response_model=list[FileEntry])
async def list_files(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> list[FileEntry]:
    """Regular files in the work dir (symlinks are not followed)."""
    session = await manager.find(principal.id, session_id)
    entries = await asyncio.to_thread(workfiles.scan, manager.workdir(session))
    return [
        FileEntry(
            path=e.path, size=e.size, mime_type=e.mime_type, modified_at=datetime.fromtimestamp(e.mtime_ns / 1e9, UTC)
        )
        for e in sorted(entries.values(), key=lambda e: e.path)
    ]


def _spooled_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    spool.seek(0)
    while block := spool.read(1 << 16):
        yield block


@router.put("/sessions/{session_id}/files/{path:path}", status_code=201, response_model=FileEntry)
async def upload_file(
    session_id: SessionId, path: str, request: Request, principal: CurrentPrincipal, manager: Manager
) -> FileEntry:
    """Upload the raw request body as a file (parents are created)."""
    session = await manager.find(principal.id, session_id)
    rel = _clean(path)
    workdir = manager.workdir(session, write=True)
    limit = manager.settings.max_upload_mb * 1024 * 1024
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge("upload_too_large", f"uploads are limited to {manager.settings.max_upload_mb} MiB")
            spool.write(chunk)
        try:
            written = await asyncio.to_thread(
                workfiles.write_file, workdir, rel, _spooled_chunks(spool), manager.file_owner(session)
            )
        except (OSError, ValueError) as exc:
            raise _file_error(path, exc) from None
    return FileEntry(
        path=str(rel), size=written, mime_type=workfiles.mime_type(str(rel)), modified_at=datetime.now(UTC)
    )


@router.get("/sessions/{session_id}/files/{path:path}", response_class=StreamingResponse)
async def download_file(
    session_id: SessionId, path: str, principal: CurrentPrincipal, manager: Manager
) -> StreamingResponse:
    session = await manager.find(principal.id, session_id)
    rel = _clean(path)
    try:
        fd, size = await asyncio.to_thread(workfiles.open_read, manager.workdir(session), rel)
    except (OSError, ValueError) as exc:
        raise _file_error(path, exc) from None
    return StreamingResponse(
        workfiles.iter_file(fd),
        media_type=workfiles.mime_type(rel.name),
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(rel.name, safe='')}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.delete("/sessions/{session_id}/files/{path:path}", status_code=204)
async def delete_file(session_id: SessionId, path: str, principal: CurrentPrincipal, manager: Manager) -> Response:
    session = await manager.find(principal.id, session_id)
    rel = _clean(path)
    try:
        await asyncio.to_thread(workfiles.delete, manager.workdir(session, write=True), rel)
    except (OSError, ValueError) as exc:
        raise _file_error(path, exc) from None
    return Response(status_code=204)


# -- one shot -------------------------------------------------------------------------------------------


@router.post(
    "/execute",
    response_model=ExecutionResult,
    responses={413: {"description": "The cell wrote more files than a one-shot answer carries inline"}},
)
async def execute_once(body: OneShotRequest, principal: CurrentPrincipal, manager: Manager) -> Response:
    """Fresh session, place the files, run the code, delete the session, return the result. Files the cell
    wrote are inline (base64), up to ``EXECUTOR_ONE_SHOT_MAX_FILES_BYTES`` in all; past it, 413 naming them."""
    decoded: list[tuple[PurePosixPath, bytes]] = []
    for i, f in enumerate(body.files):
        try:
            data = base64.b64decode(f.data, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("bad_base64", f"files[{i}].data is not valid base64", field=f"files.{i}.data") from None
        try:
            decoded.append((workfiles.clean_path(f.path), data))
        except workfiles.UnsafePath as exc:
            raise Invalid("bad_path", f"files[{i}].path: {exc}", field=f"files.{i}.path") from None
    raw = await manager.run_once(
        principal.id,
        body.code,
        files=decoded,
        limits=body.limits.to_domain() if body.limits else None,
        env=body.env,
        timeout_s=body.timeout_s,
    )
    return _json(raw)
