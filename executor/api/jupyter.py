"""The Jupyter face: the subset of Jupyter Server's REST API and kernel websocket that its clients use.

Open WebUI's code interpreter (``CODE_EXECUTION_ENGINE=jupyter``) and other Jupyter clients point at the service
unchanged: each kernel is a session of the service (same limits, owner rules, culling and backend), created by
``POST /api/kernels`` and ended by ``DELETE``. Served at the root or under ``EXECUTOR_JUPYTER_PREFIX``.

Auth is the service's API keys, presented the ways Jupyter clients present a token: ``?token=T``,
``Authorization: token T`` or ``Authorization: Bearer T``. As Jupyter Server does, a missing or wrong token is a
403; a kernel of another key (or end user) is a 404.

The websocket (executor/api/jupyter_channels.py) speaks the classic JSON protocol (text frames, no
subprotocol): ``execute_request`` on ``shell`` runs the cell through the session manager and its output is sent as
it arrives, each message answering the request through ``parent_header``; ``kernel_info_request``,
``comm_info_request``, ``interrupt_request`` and ``shutdown_request`` are answered; other requests get an error
reply; ``stdin`` is not offered (cells run with ``allow_stdin`` off, so ``input()`` fails in the cell with the
kernel's own message). A message larger than ``EXECUTOR_JUPYTER_MAX_MESSAGE_BYTES`` is made to fit
(executor.jupyter.fit).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.requests import HTTPConnection

from executor.access.principal import Principal
from executor.api.deps import authenticate
from executor.api.jupyter_channels import Channels
from executor.errors import DomainError, Forbidden, Invalid, NotFound, Unauthenticated
from executor.jupyter.face import JupyterFace, JupyterSession, kernel_id_of, new_session_id, session_of
from executor.jupyter.messages import KERNEL_NAME
from executor.sessions import NewSession, Session, SessionManager

log = logging.getLogger(__name__)

router = APIRouter(tags=["jupyter"])

# What GET /api answers: the Jupyter Server release whose API this face follows.
JUPYTER_SERVER_VERSION = "2.14.0"
KernelId = Annotated[str, Path(max_length=64, description="Kernel id (the id of the service session behind it)")]


def _face(conn: HTTPConnection) -> JupyterFace:
    face: JupyterFace | None = getattr(conn.app.state, "jupyter", None)
    if face is None:
        face = conn.app.state.jupyter = JupyterFace()
    return face


def _manager(conn: HTTPConnection) -> SessionManager:
    manager: SessionManager = conn.app.state.sessions
    return manager


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a Jupyter client presents: ``Authorization: token T`` or ``Bearer T``, else ``?token=T``."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return conn.query_params.get("token") or None


async def jupyter_principal(conn: HTTPConnection) -> Principal:
    """The caller, by the service's API keys; Forbidden (403, as Jupyter Server answers) when the token is
    missing or not a live key."""
    try:
        return await authenticate(conn, presented_token(conn), None)
    except Unauthenticated as exc:
        raise Forbidden("forbidden", f"{exc.message} (Jupyter clients: ?token=<key> or 'Authorization: token "
                        "<key>')") from None  # fmt: skip


async def _principal(request: Request) -> Principal:
    return await jupyter_principal(request)


Caller = Annotated[Principal, Depends(_principal)]


def _iso(moment: Any) -> str:
    # Always with microseconds: jupyter_server's gateway client parses it with "%Y-%m-%dT%H:%M:%S.%fZ".
    return str(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def kernel_model(session: Session, face: JupyterFace) -> dict[str, Any]:
    """A kernel as Jupyter Server describes one."""
    state = {"idle": "idle", "busy": "busy"}.get(session.status, "dead")
    return {
        "id": kernel_id_of(session.id),
        "name": KERNEL_NAME,
        "last_activity": _iso(session.last_active),
        "execution_state": state,
        "connections": face.connections.get(session.id, 0),
    }


def _session_model(js: JupyterSession, session: Session, face: JupyterFace) -> dict[str, Any]:
    return {
        "id": js.id,
        "path": js.path,
        "name": js.name,
        "type": js.type,
        "kernel": kernel_model(session, face),
        "notebook": {"path": js.path, "name": js.name},
    }


# -- REST ------------------------------------------------------------------------------------------------


@router.get("/api")
async def api_version() -> dict[str, str]:
    """The Jupyter Server API version (no auth, as Jupyter Server)."""
    return {"version": JUPYTER_SERVER_VERSION}


def _kernelspec() -> dict[str, Any]:
    return {
        "name": KERNEL_NAME,
        "spec": {
            "argv": [],
            "display_name": "Python 3 (sandboxed)",
            "language": "python",
            "interrupt_mode": "message",
            "env": {},
            "metadata": {},
        },
        "resources": {},
    }


@router.get("/api/kernelspecs")
async def kernelspecs(_: Caller) -> dict[str, Any]:
    """The one kernel this service offers: sandboxed Python."""
    return {"default": KERNEL_NAME, "kernelspecs": {KERNEL_NAME: _kernelspec()}}


@router.get("/api/kernelspecs/{name}")
async def kernelspec(name: Annotated[str, Path(max_length=64)], _: Caller) -> dict[str, Any]:
    if name != KERNEL_NAME:
        raise NotFound("kernelspec_not_found", f"no kernel named {name!r}; this service offers {KERNEL_NAME!r}")
    return _kernelspec()


class KernelCreate(BaseModel):
    """Jupyter's kernel start body. ``env`` (a gateway client's ``KERNEL_*``) is ignored: the sandbox's
    environment is the service's."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    path: str | None = None


def _check_name(name: str | None) -> None:
    if name not in (None, "", KERNEL_NAME, "python"):
        raise Invalid("no_such_kernel", f"no kernel named {name!r}; this service offers {KERNEL_NAME!r}", field="name")


@router.get("/api/kernels")
async def list_kernels(request: Request, principal: Caller) -> list[dict[str, Any]]:
    """Your kernels (the sessions of your key, or of your end user behind it)."""
    face = _face(request)
    manager = _manager(request)
    return [kernel_model(s, face) for s in manager.sessions.values() if s.owner == principal.id]


@router.post("/api/kernels", status_code=201)
async def start_kernel(
    request: Request,
    principal: Caller,
    body: Annotated[KernelCreate | None, Body(description="Optional: Open WebUI sends none.")] = None,
) -> JSONResponse:
    """A fresh sandboxed kernel: a new session of the service with the default limits."""
    _check_name(body.name if body else None)
    face = _face(request)
    manager = _manager(request)
    face.forget_gone(manager)
    session = await manager.create(principal.id, NewSession())
    model = kernel_model(session, face)
    location = f"{request.url.path.rstrip('/')}/{kernel_id_of(session.id)}"
    return JSONResponse(model, status_code=201, headers={"Location": location})


@router.get("/api/kernels/{kernel_id}")
async def get_kernel(kernel_id: KernelId, request: Request, principal: Caller) -> dict[str, Any]:
    return kernel_model(await _manager(request).find(principal.id, session_of(kernel_id)), _face(request))


@router.delete("/api/kernels/{kernel_id}", status_code=204)
async def delete_kernel(kernel_id: KernelId, request: Request, principal: Caller) -> Response:
    """End the kernel: the session, its sandbox and its work dir."""
    # Answered once the kernel is gone from the face; its processes are killed beside the next requests.
    await _manager(request).delete(principal.id, session_of(kernel_id), background=True)
    _face(request).forget_gone(_manager(request))
    return Response(status_code=204)


@router.post("/api/kernels/{kernel_id}/interrupt", status_code=204)
async def interrupt_kernel(kernel_id: KernelId, request: Request, principal: Caller) -> Response:
    """Interrupt the running cell (it ends cancelled; the kernel and its state stay)."""
    manager = _manager(request)
    session = await manager.find(principal.id, session_of(kernel_id))
    if session.current is not None:
        await manager.cancel(session, session.current)
    return Response(status_code=204)


@router.post("/api/kernels/{kernel_id}/restart")
async def restart_kernel(kernel_id: KernelId, request: Request, principal: Caller) -> dict[str, Any]:
    """A fresh kernel in the same sandbox (variables gone, files kept). 409 while a cell runs."""
    session = await _manager(request).restart(principal.id, session_of(kernel_id))
    _face(request).counts.pop(session.id, None)
    return kernel_model(session, _face(request))


class JupyterSessionCreate(BaseModel):
    """Jupyter's session body: a path, and a kernel by ``name`` (a new one) or ``id`` (one of yours)."""

    model_config = ConfigDict(extra="ignore")
    path: str = ""
    name: str = ""
    type: str = "notebook"
    kernel: dict[str, Any] | None = None


@router.get("/api/sessions")
async def list_jupyter_sessions(request: Request, principal: Caller) -> list[dict[str, Any]]:
    face, manager = _face(request), _manager(request)
    face.forget_gone(manager)
    return [
        _session_model(js, manager.sessions[js.kernel_id], face)
        for js in face.sessions.values()
        if js.owner == principal.id
    ]


@router.post("/api/sessions", status_code=201)
async def create_jupyter_session(request: Request, principal: Caller, body: JupyterSessionCreate) -> dict[str, Any]:
    """Bind a path to a kernel: the one named by ``kernel.id`` (yours), else a new one."""
    face, manager = _face(request), _manager(request)
    face.forget_gone(manager)
    wanted = body.kernel or {}
    kernel_id = wanted.get("id")
    if isinstance(kernel_id, str) and kernel_id:
        session = await manager.find(principal.id, session_of(kernel_id[:64]))
    else:
        _check_name(wanted.get("name") if isinstance(wanted.get("name"), str) else None)
        session = await manager.create(principal.id, NewSession())
    js = JupyterSession(new_session_id(), principal.id, session.id, body.path[:1024], body.name[:256], body.type[:64])
    face.sessions[js.id] = js
    return _session_model(js, session, face)


def _own_session(request: Request, principal: Principal, session_id: str) -> JupyterSession:
    face = _face(request)
    face.forget_gone(_manager(request))
    js = face.sessions.get(session_id)
    if js is None or js.owner != principal.id:
        raise NotFound("session_not_found", f"session {session_id!r} does not exist")
    return js


@router.get("/api/sessions/{session_id}")
async def get_jupyter_session(
    session_id: Annotated[str, Path(max_length=64)], request: Request, principal: Caller
) -> dict[str, Any]:
    js = _own_session(request, principal, session_id)
    return _session_model(js, _manager(request).sessions[js.kernel_id], _face(request))


@router.delete("/api/sessions/{session_id}", status_code=204)
async def delete_jupyter_session(
    session_id: Annotated[str, Path(max_length=64)], request: Request, principal: Caller
) -> Response:
    """End the session and its kernel, as Jupyter Server does."""
    js = _own_session(request, principal, session_id)
    _face(request).sessions.pop(js.id, None)
    with contextlib.suppress(NotFound):
        await _manager(request).delete(principal.id, js.kernel_id)
    return Response(status_code=204)


# -- the kernel websocket ----------------------------------------------------------------------------------


async def _deny(websocket: WebSocket, status: int, code: str, detail: str) -> None:
    """Refuse the handshake with an HTTP answer (403, 404) when the server can send one, else close."""
    audit = getattr(websocket.app.state, "audit", None)
    if audit is not None and status == 403:
        audit.record(
            "refused",
            code,
            principal=getattr(websocket.state, "principal", None),
            key_id=getattr(websocket.state, "key_id", None),
            target=f"WEBSOCKET {websocket.url.path}"[:255],
            status=status,
            detail={"client": websocket.client.host if websocket.client else None},
        )
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"detail": detail, "error": code, "field": None}
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    else:
        await websocket.close(code=1008)


@router.websocket("/api/kernels/{kernel_id}/channels")
async def channels(websocket: WebSocket, kernel_id: str) -> None:
    """The kernel's channels over one websocket (classic JSON protocol)."""
    try:
        principal = await jupyter_principal(websocket)
    except DomainError as exc:
        await _deny(websocket, 403, exc.code, exc.message)
        return
    manager = _manager(websocket)
    try:
        session = await manager.find(principal.id, session_of(kernel_id[:64]))
    except DomainError as exc:  # not yours or no such kernel (404); a dead one of a shared backend (409)
        await _deny(websocket, 404 if isinstance(exc, NotFound) else 409, exc.code, exc.message)
        return
    await websocket.accept()
    face = _face(websocket)
    face.connections[session.id] = face.connections.get(session.id, 0) + 1
    try:
        await Channels(websocket, manager, session, face).run()
    finally:
        face.connections[session.id] -= 1
        if not face.connections[session.id]:
            del face.connections[session.id]
