"""Sessions, executions and files: ``/api/v1/sessions`` and the one-shot ``/api/v1/execute``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import IO, Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from executor import workfiles
from executor.api.deps import CurrentPrincipal
from executor.errors import ApiError, Forbidden
from executor.results import ExecutionResult
from executor.sessions import (
    Execution,
    ExecutionAccepted,
    LimitsIn,
    Session,
    SessionCreate,
    SessionInfo,
    SessionManager,
)

router = APIRouter(prefix="/api/v1", tags=["sessions"])

MAX_CODE = 1 << 20


async def get_manager(request: Request) -> SessionManager:
    # async: FastAPI runs sync dependencies in its threadpool, a thread hop on every request.
    return request.app.state.sessions


Manager = Annotated[SessionManager, Depends(get_manager)]
SessionId = Annotated[str, Path(max_length=64, description="Session id")]
ExecutionId = Annotated[str, Path(max_length=64, description="Execution id")]


class ExecutionRequest(BaseModel):
    code: str = Field(..., max_length=MAX_CODE, description="Python source of the cell.")
    timeout_s: float | None = Field(None, gt=0, description="Wall time of this cell; the session's default if omitted.")
    wait: bool = Field(True, description="Answer with the finished result (true) or 202 at once (false).")


class FileUpload(BaseModel):
    path: str = Field(..., description="Relative path in the work dir.")
    data: str = Field(..., description="File content, base64.")


class OneShotRequest(BaseModel):
    code: str = Field(..., max_length=MAX_CODE)
    timeout_s: float | None = Field(None, gt=0)
    files: list[FileUpload] = Field(default_factory=list, max_length=100, description="Files placed before running.")
    limits: LimitsIn | None = None
    env: dict[str, str] | None = None


class FileEntry(BaseModel):
    path: str
    size: int
    mime_type: str
    modified_at: datetime


# -- sessions -------------------------------------------------------------------------------------------


@router.post("/sessions", status_code=201, response_model=SessionInfo)
async def create_session(body: SessionCreate, principal: CurrentPrincipal, manager: Manager) -> SessionInfo:
    """Start a sandboxed kernel. 429 with Retry-After when the host or the caller is at capacity."""
    session = await manager.create(principal.id, body)
    return session.info()


@router.get("/sessions", response_model=list[SessionInfo])
async def list_sessions(
    principal: CurrentPrincipal,
    manager: Manager,
    all: Annotated[bool, Query(description="Every principal's live sessions (admin keys only).")] = False,
) -> list[SessionInfo]:
    """Your live sessions (yours: this key's, or this end user's behind it)."""
    if all and not principal.is_admin:
        raise Forbidden("admin_required", "all=true needs an admin key", field="all")
    return manager.list(None if all else principal.id)


@router.get("/sessions/{session_id}", response_model=SessionInfo)
async def get_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> SessionInfo:
    """One of your sessions (admins: anyone's)."""
    return await manager.info(None if principal.is_admin else principal.id, session_id)


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> Response:
    """Kill the kernel and every process it started, and remove the work dir. Admins may delete any session."""
    await manager.delete(None if principal.is_admin else principal.id, session_id)
    return Response(status_code=204)


@router.post("/sessions/{session_id}/restart", response_model=SessionInfo)
async def restart_session(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> SessionInfo:
    """A fresh kernel in the same sandbox, as Jupyter's restart: variables are gone, files stay. Also brings a
    dead session back (never done silently). 409 while a cell runs or waits."""
    return (await manager.restart(principal.id, session_id)).info()


# -- executions -----------------------------------------------------------------------------------------


@router.post(
    "/sessions/{session_id}/executions",
    response_model=ExecutionResult,
    responses={202: {"model": ExecutionAccepted, "description": "Queued (wait=false)"}},
)
async def execute(
    session_id: SessionId, body: ExecutionRequest, principal: CurrentPrincipal, manager: Manager
) -> Response:
    """Run a cell. Cells of one session run one at a time, in submission order."""
    session = manager.get(principal.id, session_id)
    ex = manager.submit(session, body.code, body.timeout_s)
    if not body.wait:
        accepted = ExecutionAccepted(id=ex.id, session_id=session.id, status=ex.status)
        return JSONResponse(accepted.model_dump(), status_code=202)
    await ex.done.wait()
    assert ex.result is not None
    return _json(ex.result)


def _json(result: ExecutionResult) -> Response:
    # Already a validated model: skip FastAPI's re-validation of the response (about a millisecond a cell).
    return Response(result.model_dump_json(), media_type="application/json")


async def _execution(manager: SessionManager, owner: str, session_id: str, execution_id: str) -> Execution:
    found = await manager.get_execution(owner, session_id, execution_id)
    if isinstance(found, ExecutionResult):
        raise ApiError(409, "execution_finished", "this execution finished long ago and can no longer be changed")
    return found


@router.get("/sessions/{session_id}/executions/{execution_id}", response_model=ExecutionResult)
async def get_execution(
    session_id: SessionId, execution_id: ExecutionId, principal: CurrentPrincipal, manager: Manager
) -> Response:
    """Poll: the final result once done, else the status and what has arrived so far."""
    found = await manager.get_execution(principal.id, session_id, execution_id)
    return _json(found if isinstance(found, ExecutionResult) else found.snapshot())


@router.get(
    "/sessions/{session_id}/executions/{execution_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"description": "Server-Sent Events: status, stream, output, result, error, clear, done"}},
)
async def execution_events(
    session_id: SessionId,
    execution_id: ExecutionId,
    principal: CurrentPrincipal,
    manager: Manager,
    last_event_id: Annotated[int | None, Header(ge=-1)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Stream an execution as it happens. A late subscriber first gets everything that already happened
    (or only what follows ``Last-Event-ID``); the stream ends with a ``done`` event carrying the result."""
    found = await manager.get_execution(principal.id, session_id, execution_id)
    if isinstance(found, ExecutionResult):
        yield ServerSentEvent(event="done", data=found.model_dump(mode="json"), id="0")
        return
    index = -1
    async for name, payload in found.events():
        index += 1
        if last_event_id is not None and index <= last_event_id:
            continue
        yield ServerSentEvent(event=name, data=payload, id=str(index))


@router.post("/sessions/{session_id}/executions/{execution_id}/cancel", response_model=ExecutionResult)
async def cancel_execution(
    session_id: SessionId, execution_id: ExecutionId, principal: CurrentPrincipal, manager: Manager
) -> ExecutionResult:
    """Interrupt a running cell or drop a queued one; it ends ``cancelled`` and the session stays usable."""
    session = manager.get(principal.id, session_id)
    ex = await _execution(manager, principal.id, session_id, execution_id)
    await manager.cancel(session, ex)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ex.done.wait(), timeout=10)
    return ex.snapshot()


# -- files ----------------------------------------------------------------------------------------------


def _clean(raw: str) -> workfiles.PurePosixPath:
    try:
        return workfiles.clean_path(raw)
    except workfiles.UnsafePath as exc:
        raise ApiError(400, "bad_path", f"path {raw!r}: {exc}", field="path") from None


def _file_errors(raw: str, exc: Exception) -> ApiError:
    if isinstance(exc, workfiles.UnsafePath):
        return ApiError(400, "bad_path", f"path {raw!r}: {exc}", field="path")
    if isinstance(exc, workfiles.NotAFile | IsADirectoryError):
        return ApiError(400, "not_a_file", f"path {raw!r} is not a regular file", field="path")
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return ApiError(404, "file_not_found", f"file {raw!r} does not exist")
    if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG
        return ApiError(413, "file_too_large", "the file is larger than the sandbox's file-size limit")
    return ApiError(500, "file_error", f"could not access {raw!r}")


@router.get("/sessions/{session_id}/files", response_model=list[FileEntry])
async def list_files(session_id: SessionId, principal: CurrentPrincipal, manager: Manager) -> list[FileEntry]:
    """Regular files in the work dir (symlinks are not followed)."""
    session = manager.get(principal.id, session_id)
    entries = await asyncio.to_thread(workfiles.scan, session.sandbox.workdir)
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
    session = manager.get(principal.id, session_id)
    rel = _clean(path)
    limit = manager.settings.max_upload_mb * 1024 * 1024
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "upload_too_large", f"uploads are limited to {manager.settings.max_upload_mb} MiB")
            spool.write(chunk)
        owner = getattr(session.sandbox, "file_owner", None)
        try:
            written = await asyncio.to_thread(
                workfiles.write_file, session.sandbox.workdir, rel, _spooled_chunks(spool), owner
            )
        except (OSError, ValueError) as exc:
            raise _file_errors(path, exc) from None
    return FileEntry(
        path=str(rel), size=written, mime_type=workfiles.mime_type(str(rel)), modified_at=datetime.now(UTC)
    )


@router.get("/sessions/{session_id}/files/{path:path}", response_class=StreamingResponse)
async def download_file(
    session_id: SessionId, path: str, principal: CurrentPrincipal, manager: Manager
) -> StreamingResponse:
    session = manager.get(principal.id, session_id)
    rel = _clean(path)
    try:
        fd, size = await asyncio.to_thread(workfiles.open_read, session.sandbox.workdir, rel)
    except (OSError, ValueError) as exc:
        raise _file_errors(path, exc) from None
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
    session = manager.get(principal.id, session_id)
    rel = _clean(path)
    try:
        await asyncio.to_thread(workfiles.delete, session.sandbox.workdir, rel)
    except (OSError, ValueError) as exc:
        raise _file_errors(path, exc) from None
    return Response(status_code=204)


# -- one shot -------------------------------------------------------------------------------------------


@router.post("/execute", response_model=ExecutionResult)
async def execute_once(body: OneShotRequest, principal: CurrentPrincipal, manager: Manager) -> ExecutionResult:
    """Fresh session, place the files, run the code, delete the session, return the result."""
    decoded: list[tuple[workfiles.PurePosixPath, bytes]] = []
    for i, f in enumerate(body.files):
        try:
            data = base64.b64decode(f.data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"files[{i}].data is not valid base64", field=f"files.{i}.data") from None
        try:
            decoded.append((workfiles.clean_path(f.path), data))
        except workfiles.UnsafePath as exc:
            raise ApiError(400, "bad_path", f"files[{i}].path: {exc}", field=f"files.{i}.path") from None
    session: Session = await manager.create(principal.id, SessionCreate(limits=body.limits, env=body.env))
    try:
        owner = getattr(session.sandbox, "file_owner", None)
        for rel, data in decoded:
            await asyncio.to_thread(workfiles.write_file, session.sandbox.workdir, rel, iter([data]), owner)
        ex = manager.submit(session, body.code, body.timeout_s)
        await ex.done.wait()
        assert ex.result is not None
        result = ex.result
        # The session is about to vanish: files too large to inline cannot be fetched later.
        for f in result.files:
            f.url = None
        return result
    finally:
        await manager.end(session, "closed", "one-shot execution finished")
