"""Kernels on a remote Jupyter Server, Kernel Gateway or Enterprise Gateway: the scale-out backend.

REST (httpx) creates, interrupts, restarts and deletes kernels; the classic JSON websocket
(``/api/kernels/{id}/channels``, no subprotocol) carries shell, iopub and stdin. Auth is ``Authorization: token T``.

Isolation is the gateway's: the service cannot jail a remote kernel. Enterprise Gateway's kernel pods or
containers are the sandbox (network policy, read-only image, limits from ``KERNEL_CPUS``/``KERNEL_MEMORY``...);
a Kernel Gateway with local kernels isolates nothing and is for development and tests only.

``sandbox.id`` and ``ref`` are the gateway's kernel id, so any replica of the service may ``attach`` to a kernel
another one created (``RemoteBackend.shared``). Everything the gateway sends is untrusted and bounded: one
websocket message by ``max_message_bytes`` (past it the cell ends and the kernel is stopped), REST bodies by
``_MAX_REST_BYTES``, every call by ``request_timeout_s``.

Facts measured against Kernel Gateway 3.0.1 on jupyter_server 2.21.1:
- ``POST /api/kernels`` answers 201 once the kernel process started (``execution_state`` ``starting``); only env
  names starting with ``KERNEL_`` reach the kernel (plus ``KERNEL_GATEWAY=1``), so the session's own env is set
  by a silent cell after start.
- A kernel that dies is restarted by the gateway (autorestart): iopub ``status`` ``restarting`` with an empty
  parent header, then the same websocket talks to a fresh kernel (state lost, execution count back to 1). The
  exit status is not reported. ``dead`` follows when the restart fails.
- A deleted or culled kernel answers ``GET /api/kernels/{id}`` with 404 ``{"reason", "message"}``.
- The kernel's cwd is the gateway's cwd, shared by all its kernels: ``work_dir`` gives each kernel a dir of its
  own (``<work_dir>/<kernel id>``), made on start and removed on close.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from sandboxes.base import (
    EndEvent,
    ErrorEvent,
    Event,
    FileStat,
    InputRequestEvent,
    Limits,
    SandboxBusy,
    SandboxError,
    SandboxState,
    StatusEvent,
)
from sandboxes.kernel import _OUTPUT_TYPES, DEFAULT_MAX_MESSAGE_BYTES, message_to_event
from sandboxes.layers import LayerTarget, native_target

log = logging.getLogger(__name__)

_MAX_REST_BYTES = 1 << 20
# Messages read ahead of the cell that consumes them; past it the websocket is not read (TCP backpressure).
_INBOX = 1024
_POLL_S = 0.25
# A gateway need not close the websocket of a kernel it deleted (Kernel Gateway does not): a cell that hears
# nothing for this long asks the REST API whether its kernel still exists.
_LIVENESS_S = 1.0
# An explicit restart right after the gateway's own autorestart fails (500) until that one is done.
_RESTART_TRIES = 10
_REINTERRUPT_S = 0.5
_PAST_CELLS = 64
_PROTOCOL_VERSION = "5.3"
GONE = "the kernel is gone from the gateway (culled for idleness or deleted)"
RESTARTED = "the kernel died and the gateway restarted it: its state is lost"
_USERNAME = re.compile(r"[^0-9a-z]+")
# File bytes per cell: base64 of it stays well under Tornado's default websocket message cap (10 MiB).
_FILE_CHUNK = 4 << 20
_FILE_CELL_S = 60.0
_ANSWER = "globals().pop('__executor_answer', '')"

# Runs in the kernel (stock ipykernel, standard library only) for every file operation; leaves one JSON answer
# in a global, read back as a user expression in the execute_reply. Paths are resolved under the work dir
# and refused when they leave it (``..``, absolute, symlinks out).
_FILES_PRELUDE = r"""
def __executor_files(op, path, arg):
    import base64, json, os, shutil
    root = os.path.realpath(os.environ.get('EXECUTOR_WORK_DIR') or os.getcwd())
    global __executor_answer
    def out(**kw):
        global __executor_answer
        __executor_answer = json.dumps(kw)
    def resolve(p):
        if p.startswith('/') or '..' in p.split('/'):
            raise PermissionError('unsafe path')
        full = os.path.join(root, p)
        if os.path.commonpath([root, os.path.realpath(os.path.dirname(full))]) != root:
            raise PermissionError('the path leaves the work dir')
        return full
    try:
        if op == 'list':
            files, n, cut, stack = [], 0, False, ['']
            while stack and not cut:
                rel = stack.pop()
                try:
                    it = os.scandir(os.path.join(root, rel) if rel else root)
                except OSError:
                    continue
                with it:
                    for e in it:
                        n += 1
                        if n > arg:
                            cut = True
                            break
                        p = rel + '/' + e.name if rel else e.name
                        try:
                            if e.is_dir(follow_symlinks=False):
                                stack.append(p)
                            elif e.is_file(follow_symlinks=False):
                                st = e.stat(follow_symlinks=False)
                                files.append([p, st.st_size, st.st_mtime_ns])
                        except OSError:
                            pass
            out(files=files, cut=cut)
        elif op == 'read':
            full = resolve(path)
            if os.path.islink(full):
                raise PermissionError('the path is a symlink')
            if os.path.isdir(full):
                raise IsADirectoryError(path)
            offset, size = arg
            with open(full, 'rb') as f:
                total = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(size)
            out(data=base64.b64encode(data).decode(), total=total)
        elif op == 'write':
            full = resolve(path)
            data, first, last = arg
            tmp = full + '.executor-upload'
            if first:
                os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(tmp, 'wb' if first else 'ab') as f:
                f.write(base64.b64decode(data))
            if last:
                if os.path.isdir(full) and not os.path.islink(full):
                    os.unlink(tmp)
                    raise IsADirectoryError(path)
                os.replace(tmp, full)
            out(ok=True)
        elif op == 'delete':
            full = resolve(path)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            out(ok=True)
    except FileNotFoundError:
        out(error='missing')
    except (IsADirectoryError, NotADirectoryError):
        out(error='isdir')
    except PermissionError as exc:
        out(error='unsafe', message=str(exc))
    except OSError as exc:
        out(error='os', message=str(exc), errno=exc.errno)
"""


@dataclass(frozen=True)
class RemoteConfig:
    """What the remote backend needs from the service's settings."""

    url: str
    token: str | None = None
    verify: bool | str = True  # a CA bundle path, or whether to verify TLS at all
    kernel_name: str = "python3"
    kernel_image: str | None = None
    kernel_namespace: str | None = None
    kernel_env: Mapping[str, str] = field(default_factory=dict)
    launch_timeout_s: float = 60.0
    request_timeout_s: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    work_dir: str | None = None
    interrupt_grace_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SandboxError(f"EXECUTOR_REMOTE_URL must be an http(s) URL, not {self.url!r}")
        bad = [k for k in self.kernel_env if not k.startswith("KERNEL_")]
        if bad:
            raise SandboxError(f"EXECUTOR_REMOTE_KERNEL_ENV may only name KERNEL_* variables, not {bad}")


def kernel_username(owner: str | None) -> str:
    """An owner label as Enterprise Gateway's pod names accept it (DNS label: ``[0-9a-z-]``), short enough that
    ``<user>-<36-char kernel id>`` stays within 63 characters."""
    name = _USERNAME.sub("-", (owner or "").lower()).strip("-")[:26].strip("-")
    return name or "executor"


def kernel_env(config: RemoteConfig, limits: Limits, labels: Mapping[str, str]) -> dict[str, str]:
    """The ``KERNEL_*`` env of ``POST /api/kernels``: what Enterprise Gateway's kernel-pod template reads."""
    env = {
        "KERNEL_USERNAME": kernel_username(labels.get("executor.owner")),
        "KERNEL_CPUS": f"{limits.cpus:g}",
        "KERNEL_CPUS_LIMIT": f"{limits.cpus:g}",
        "KERNEL_MEMORY": f"{limits.memory_mb}Mi",
        "KERNEL_MEMORY_LIMIT": f"{limits.memory_mb}Mi",
        "KERNEL_LAUNCH_TIMEOUT": f"{config.launch_timeout_s:g}",
    }
    if config.kernel_image:
        env["KERNEL_IMAGE"] = config.kernel_image
    if config.kernel_namespace:
        env["KERNEL_NAMESPACE"] = config.kernel_namespace
    env.update(config.kernel_env)
    return env


class _Gateway:
    """The REST side: bounded, timed calls that raise SandboxError in words."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.base = config.url.rstrip("/")
        self.headers = {"Authorization": f"token {config.token}"} if config.token else {}
        self.client = httpx.AsyncClient(
            base_url=self.base, headers=self.headers, verify=config.verify, timeout=config.request_timeout_s
        )

    def ws_url(self, kernel_id: str) -> str:
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/api/kernels/{quote(kernel_id)}/channels"

    async def call(self, method: str, path: str, *, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """(status, parsed JSON body or None). Transport errors and 5xx raise SandboxError."""
        try:
            async with asyncio.timeout(timeout or self.config.request_timeout_s):
                async with self.client.stream(method, path, json=body) as resp:
                    data = b""
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > _MAX_REST_BYTES:
                            raise SandboxError(f"the gateway's answer to {method} {path} is over 1 MiB")
                    status = resp.status_code
        except TimeoutError:
            raise SandboxError(f"the gateway did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise SandboxError(f"the gateway at {self.base} cannot be reached: {type(exc).__name__}: {exc}") from None
        parsed: Any = None
        if data:
            with contextlib.suppress(ValueError):
                parsed = json.loads(data)
        if status in (401, 403):
            raise SandboxError(f"the gateway refused {method} {path} ({status}): check EXECUTOR_REMOTE_TOKEN")
        if status >= 500:
            raise SandboxError(f"the gateway failed {method} {path} ({status}): {_message(parsed)}")
        return status, parsed

    async def kernel(self, kernel_id: str) -> dict[str, Any] | None:
        status, body = await self.call("GET", f"/api/kernels/{quote(kernel_id)}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise SandboxError(f"the gateway answered GET /api/kernels/{kernel_id} with {status}")
        return body

    async def kernels(self) -> list[str]:
        status, body = await self.call("GET", "/api/kernels")
        if status != 200 or not isinstance(body, list):
            return []
        return [str(k["id"]) for k in body[:10_000] if isinstance(k, dict) and "id" in k]


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or "")[:500]
    return ""


class RemoteSandbox:
    """One kernel on the gateway, driven over its websocket. Implements the Sandbox protocol.

    States as KernelSandbox: ``starting -> idle <-> busy``, ``restarting``, ``dead``, ``closed``. The gateway's
    autorestart after a kernel death leaves the sandbox ``dead`` (its state is lost) until ``restart``.
    """

    jail = "remote"
    workdir: Path | None = None

    def __init__(self, backend: RemoteBackend, kernel_id: str, limits: Limits, env: Mapping[str, str]) -> None:
        self.backend = backend
        self.gateway = backend.gateway
        self.id = kernel_id
        self.limits = limits
        self.env = dict(env)
        self._session = secrets.token_hex(8)
        self._state: SandboxState = "starting"
        self._reason: str | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_INBOX)
        self._link: str | None = None  # why the websocket ended
        self._oversized = False
        self._ended = False  # the gateway already replaced or removed the kernel process: nothing to kill
        self._past: deque[str] = deque(maxlen=_PAST_CELLS)
        self._pending_input: dict[str, Any] | None = None
        self._expression_value: str | None = None
        self._lock = asyncio.Lock()

    # -- what the service reads ---------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        return self._state

    @property
    def ref(self) -> str | None:
        return self.id

    @property
    def file_owner(self) -> int | None:
        return None

    @property
    def egress_socket(self) -> Path | None:
        return None

    @property
    def alive(self) -> bool:
        return self._state in ("starting", "idle", "busy")

    @property
    def exit_reason(self) -> str | None:
        if self._reason is not None:
            return self._reason
        return "the sandbox was closed" if self._state == "closed" else None

    @property
    def work_dir(self) -> str | None:
        """The kernel's own work dir on its host when the backend gives each kernel one."""
        wd = self.backend.config.work_dir
        return f"{wd.rstrip('/')}/{self.id}" if wd else None

    # -- the websocket --------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._link = None
        self._oversized = False
        self._inbox = asyncio.Queue(_INBOX)
        try:
            self._ws = await asyncio.wait_for(
                websockets.connect(
                    self.gateway.ws_url(self.id),
                    additional_headers=self.gateway.headers,
                    max_size=self.backend.config.max_message_bytes,
                    ssl=self.backend.ssl_context,
                    open_timeout=None,
                ),
                self.backend.config.request_timeout_s,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise SandboxError(f"cannot open the websocket of kernel {self.id}: {type(exc).__name__}: {exc}") from None
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _disconnect(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue  # binary frames carry buffers (comms), which no result uses
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(msg, dict) or not isinstance(msg.get("msg_type"), str):
                    continue
                msg.setdefault("content", {})
                if not isinstance(msg.get("parent_header"), dict):
                    msg["parent_header"] = {}
                if not isinstance(msg["content"], dict):
                    continue
                if msg["msg_type"] == "status" and msg.get("channel") == "iopub":
                    state = msg["content"].get("execution_state")
                    if state in ("restarting", "dead") and self._state in ("idle", "busy", "starting"):
                        self._state = "dead"
                        self._ended = True
                        self._reason = RESTARTED if state == "restarting" else "the kernel died on the gateway"
                await self._inbox.put(msg)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                self._oversized = True
            self._link = f"the websocket to the gateway closed ({exc})"
        except Exception as exc:  # any failure of the link ends it; the cell reads why
            self._link = f"the websocket to the gateway failed ({type(exc).__name__})"
        else:
            self._link = "the websocket to the gateway closed"
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(None)

    async def _send(
        self, channel: str, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None = None
    ) -> str:
        if self._ws is None:
            raise SandboxError("the websocket to the gateway is not open")
        msg_id = secrets.token_hex(16)
        msg = {
            "header": {
                "msg_id": msg_id,
                "username": "executor",
                "session": self._session,
                "msg_type": msg_type,
                "version": _PROTOCOL_VERSION,
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": parent or {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }
        try:
            await self._ws.send(json.dumps(msg))
        except ConnectionClosed:
            raise SandboxError(self._link or "the websocket to the gateway closed") from None
        return msg_id

    async def _wait_ready(self, timeout: float) -> None:
        """kernel_info answered through the websocket: shell and iopub are live."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = {await self._send("shell", "kernel_info_request", {})}
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SandboxError(f"kernel {self.id} did not answer within {timeout:g} s")
            try:
                msg = await asyncio.wait_for(self._inbox.get(), min(remaining, 1.0))
            except TimeoutError:
                sent.add(await self._send("shell", "kernel_info_request", {}))
                continue
            if msg is None:
                raise SandboxError(f"kernel {self.id}: {self._link}")
            if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") in sent:
                return

    def _setup_code(self) -> str:
        env = json.dumps(self.env)
        lines = ["import os as __o, json as __j"]
        if self.work_dir is not None:
            lines += [f"__o.makedirs({self.work_dir!r}, exist_ok=True)", f"__o.chdir({self.work_dir!r})"]
        lines += [
            f"__o.environ.update(__j.loads({env!r}))",
            "__o.environ['EXECUTOR_WORK_DIR'] = __o.getcwd()",
            "del __o, __j",
        ]
        return "\n".join(lines)

    async def _setup(self) -> None:
        if not self.env and self.work_dir is None:
            return
        async for event in self._execute(
            self._setup_code(), timeout=self.backend.config.request_timeout_s, silent=True
        ):
            if isinstance(event, ErrorEvent):
                raise SandboxError(f"setting up kernel {self.id} failed: {event.name}: {event.value}")
            if isinstance(event, EndEvent) and event.status not in ("ok",):
                raise SandboxError(f"setting up kernel {self.id} failed: {event.reason or event.status}")

    # -- life -----------------------------------------------------------------------------------------------

    async def start(self, *, setup: bool = True) -> None:
        async with self._lock:
            if self._state != "starting":
                raise SandboxError(f"the sandbox is {self._state}, not starting")
            await self._connect()
            await self._wait_ready(self.backend.config.launch_timeout_s)
            if setup:
                await self._setup()
            self._state = "idle"

    async def execute(
        self, code: str, *, timeout: float, silent: bool = False, allow_stdin: bool = False
    ) -> AsyncIterator[Event]:
        if self._state in ("starting", "restarting", "busy"):
            raise SandboxBusy(f"the kernel is {self._state}")
        if not self.alive or self._ws is None:
            yield EndEvent(status="dead", reason=self.exit_reason or "the kernel is not running", kernel_alive=False)
            return
        self._state = "busy"
        try:
            async for event in self._execute(code, timeout=timeout, silent=silent, allow_stdin=allow_stdin):
                if isinstance(event, EndEvent):
                    event = await self._on_end(event)
                    if self._state == "busy":
                        self._state = "idle"
                yield event
        finally:
            if self._state == "busy":
                self._state = "idle"

    async def _on_end(self, end: EndEvent) -> EndEvent:
        if end.status == "dead" or not end.kernel_alive:
            reason = self._reason or end.reason
            if self._state not in ("dead", "closed"):
                await self.kill(reason or "the kernel was stopped")
            self._state = "dead" if self._state != "closed" else "closed"
            self._reason = reason
            return EndEvent(status=end.status, reason=reason, kernel_alive=False, stray=end.stray)
        return end

    async def _dead_reason(self) -> str:
        if self._reason is not None:
            return self._reason
        try:
            gone = await self.gateway.kernel(self.id) is None
        except SandboxError as exc:
            return f"{self._link}; {exc}"
        if gone:
            self._ended = True
            return GONE
        return self._link or "the websocket to the gateway closed"

    async def _gone(self) -> bool:
        try:
            gone = await self.gateway.kernel(self.id) is None
        except SandboxError:
            return False  # unreachable is not gone: the wall time still bounds the cell
        if gone:
            self._ended = True
            self._reason = GONE
        return gone

    async def _execute(
        self,
        code: str,
        *,
        timeout: float,
        silent: bool = False,
        allow_stdin: bool = False,
        expression: str | None = None,
    ) -> AsyncIterator[Event]:
        """The protocol loop of one cell, as KernelDriver.execute: wall time, interrupt, grace, stray output.

        With ``expression`` the cell also waits for its ``execute_reply`` and leaves the expression's
        ``text/plain`` in ``self._expression_value``: the shell channel is not subject to the gateway's iopub
        data-rate limit, which drops large outputs."""
        loop = asyncio.get_running_loop()
        self._expression_value = None
        idle_seen = False
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": {"r": expression} if expression else {},
            "allow_stdin": allow_stdin,
            "stop_on_error": False,
        }
        try:
            msg_id = await self._send("shell", "execute_request", content)
        except SandboxError as exc:
            yield EndEvent(status="dead", reason=str(exc), kernel_alive=False)
            return
        past = set(self._past)
        self._past.append(msg_id)
        deadline = loop.time() + timeout
        interrupted = False
        next_interrupt = 0.0
        saw_error = False
        stray = 0
        grace = self.backend.config.interrupt_grace_s
        check_at = loop.time() + _LIVENESS_S
        while True:
            if self._state == "dead" and self._reason is not None:
                yield EndEvent(status="dead", reason=self._reason, kernel_alive=False, stray=stray)
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                if interrupted:
                    yield EndEvent(
                        status="timeout",
                        reason=f"the cell ran past {timeout:g} s and did not stop when interrupted",
                        kernel_alive=False,
                        stray=stray,
                    )
                    return
                interrupted = True
                await self.interrupt()
                deadline = loop.time() + grace
                next_interrupt = loop.time() + _REINTERRUPT_S
                continue
            if interrupted and loop.time() >= next_interrupt:
                await self.interrupt()
                next_interrupt = loop.time() + _REINTERRUPT_S
            try:
                msg = await asyncio.wait_for(self._inbox.get(), min(remaining, _POLL_S))
            except TimeoutError:
                if loop.time() >= check_at:
                    check_at = loop.time() + _LIVENESS_S
                    if await self._gone():
                        yield EndEvent(status="dead", reason=GONE, kernel_alive=False, stray=stray)
                        return
                continue
            check_at = loop.time() + _LIVENESS_S
            if msg is None:
                if self._oversized:
                    limit = self.backend.config.max_message_bytes >> 20
                    why = f"the kernel sent a message larger than {limit} MiB"
                    self._reason = why
                    yield ErrorEvent(name="OutputLimitExceeded", value=f"{why}; the kernel was stopped")
                    yield EndEvent(status="dead", reason=why, kernel_alive=False, stray=stray)
                    return
                yield EndEvent(status="dead", reason=await self._dead_reason(), kernel_alive=False, stray=stray)
                return
            parent = msg["parent_header"].get("msg_id")
            kind = msg["msg_type"]
            if kind == "input_request":
                if parent == msg_id:
                    self._pending_input = msg.get("header") if isinstance(msg.get("header"), dict) else None
                    c = msg["content"]
                    yield InputRequestEvent(prompt=str(c.get("prompt", "")), password=bool(c.get("password", False)))
                continue
            if msg.get("channel") == "shell" and kind == "execute_reply" and parent == msg_id and expression:
                value = msg["content"].get("user_expressions", {})
                value = value.get("r", {}) if isinstance(value, dict) else {}
                data = value.get("data", {}) if isinstance(value, dict) else {}
                text = data.get("text/plain") if isinstance(data, dict) else None
                self._expression_value = text if isinstance(text, str) else ""
                if idle_seen:
                    break
                continue
            if msg.get("channel") not in (None, "iopub"):
                continue
            if parent != msg_id:
                if parent in past and kind in _OUTPUT_TYPES:
                    stray += 1
                continue
            try:
                event = message_to_event(msg)
            except (KeyError, TypeError, ValueError):
                continue
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                saw_error = True
            yield event
            if isinstance(event, StatusEvent) and event.state == "idle":
                idle_seen = True
                if expression is None or self._expression_value is not None:
                    break
        if interrupted:
            yield EndEvent(status="timeout", reason=f"the cell ran past {timeout:g} s and was interrupted", stray=stray)
        else:
            yield EndEvent(status="error" if saw_error else "ok", stray=stray)

    # -- files (SandboxFiles) -----------------------------------------------------------------------------

    async def _files(self, op: str, path: str, arg: Any, cap: int) -> dict[str, Any]:
        """Run one file operation in the kernel; its JSON answer, at most ``cap`` bytes of it."""
        if self._state != "idle":
            raise SandboxBusy(f"the kernel is {self._state}; its files can be reached when it is idle")
        code = f"{_FILES_PRELUDE}\n__executor_files({op!r}, {path!r}, {arg!r})\ndel __executor_files"
        self._state = "busy"
        try:
            async for event in self._execute(code, timeout=_FILE_CELL_S, silent=True, expression=_ANSWER):
                if isinstance(event, ErrorEvent):
                    raise SandboxError(f"the file operation failed in the kernel: {event.name}: {event.value}")
                elif isinstance(event, EndEvent):
                    end = await self._on_end(event)
                    if end.status != "ok":
                        raise SandboxError(f"the file operation did not finish: {end.reason or end.status}")
        finally:
            if self._state == "busy":
                self._state = "idle"
        text = self._expression_value or ""
        if len(text) > cap:
            raise SandboxError("the kernel's answer to a file operation is too large")
        try:
            # text/plain of a str is its repr: a literal, never code to run.
            answer = json.loads(ast.literal_eval(text)) if text else None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise SandboxError("the kernel gave no answer to a file operation")
        error = answer.get("error")
        if error == "missing":
            raise FileNotFoundError(path)
        if error == "isdir":
            raise IsADirectoryError(path)
        if error == "unsafe":
            raise PermissionError(str(answer.get("message", "unsafe path"))[:200])
        if error is not None:
            errno = answer.get("errno")
            raise OSError(errno if isinstance(errno, int) else 0, str(answer.get("message", ""))[:200])
        return answer

    async def list_files(self, max_entries: int) -> tuple[list[FileStat], bool]:
        answer = await self._files("list", "", max_entries, self.backend.config.max_message_bytes)
        files: list[FileStat] = []
        for item in answer.get("files", [])[:max_entries]:
            if (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) for x in item[1:])
            ):
                files.append(FileStat(item[0], item[1], item[2]))
        return files, bool(answer.get("cut"))

    async def read_file(self, path: str, limit: int) -> bytes | None:
        data = bytearray()
        while True:
            want = min(_FILE_CHUNK, limit + 1 - len(data))
            answer = await self._files("read", path, (len(data), want), 2 * want + 4096)
            try:
                chunk = base64.b64decode(str(answer.get("data", "")), validate=True)
            except ValueError:
                raise SandboxError("the kernel sent a file that is not base64") from None
            total = answer.get("total")
            if isinstance(total, int) and total > limit:
                return None
            data += chunk
            if len(data) > limit:
                return None
            if len(chunk) < want or not chunk:
                return bytes(data)

    async def write_file(self, path: str, data: bytes) -> int:
        chunks = [data[i : i + _FILE_CHUNK] for i in range(0, len(data), _FILE_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            arg = (base64.b64encode(chunk).decode(), i == 0, i == len(chunks) - 1)
            await self._files("write", path, arg, 4096)
        return len(data)

    async def delete_file(self, path: str) -> None:
        await self._files("delete", path, None, 4096)

    async def reply_input(self, value: str) -> None:
        if self._state == "busy" and self._pending_input is not None:
            parent, self._pending_input = self._pending_input, None
            with contextlib.suppress(SandboxError):
                await self._send("stdin", "input_reply", {"value": value}, parent=parent)

    async def interrupt(self) -> None:
        if not self.alive:
            return
        try:
            await self.gateway.call("POST", f"/api/kernels/{quote(self.id)}/interrupt")
        except SandboxError:
            log.warning("sandbox %s: interrupt failed", self.id, exc_info=True)

    async def _gateway_restart(self) -> None:
        for attempt in range(_RESTART_TRIES):
            try:
                status, body = await self.gateway.call(
                    "POST", f"/api/kernels/{quote(self.id)}/restart", timeout=self.backend.config.launch_timeout_s
                )
                break
            except SandboxError:
                if attempt == _RESTART_TRIES - 1:
                    raise
                await asyncio.sleep(0.5)
        if status == 404:
            raise SandboxError(GONE)
        if status >= 400:
            raise SandboxError(f"the gateway refused to restart kernel {self.id} ({status}): {_message(body)}")

    async def restart(self) -> None:
        """A fresh kernel under the same id (the gateway restarts it); also revives a dead sandbox."""
        if self._state == "closed":
            raise SandboxError("the sandbox is closed")
        if self._lock.locked() or self._state == "restarting":
            raise SandboxBusy("the kernel is already starting or restarting")
        async with self._lock:
            if self._state == "busy":
                raise SandboxBusy("a cell is running; interrupt it first")
            self._state = "restarting"
            try:
                await self._disconnect()
                await self._gateway_restart()
                self._reason = None
                self._ended = False
                await self._connect()
                await self._wait_ready(self.backend.config.launch_timeout_s)
                await self._setup()
            except BaseException as exc:
                if self._state == "restarting":
                    self._state = "dead"
                    self._reason = f"restart failed: {exc}"
                raise
            if self._state == "restarting":
                self._state = "idle"

    async def kill(self, reason: str) -> None:
        """Stop what runs now: the gateway restarts the kernel process (there is no kill without delete); the
        sandbox stays ``dead`` with ``reason`` until ``restart``."""
        if self._state == "closed":
            return
        self._reason = reason
        self._state = "dead"
        await self._disconnect()
        if self._ended:
            return
        try:
            await self._gateway_restart()
        except SandboxError:
            log.warning("sandbox %s: stopping the kernel failed", self.id, exc_info=True)

    async def detach(self) -> None:
        """Stop using the kernel here without deleting it: another replica serves it next (a graceful stop of
        this one). The sandbox is closed for this process; the kernel and its work dir stay on the gateway."""
        if self._state == "closed":
            return
        self._state = "closed"
        self.backend.live.pop(self.id, None)
        await self._disconnect()

    async def close(self) -> None:
        """Delete the kernel on the gateway (its own work dir first, when it has one). Idempotent."""
        if self._state == "closed":
            return
        was_idle = self._state == "idle"
        self._state = "closed"
        self.backend.live.pop(self.id, None)
        try:
            if was_idle and self.work_dir is not None and self._ws is not None:
                code = f"import shutil as __s, os as __o\n__o.chdir('/')\n__s.rmtree({self.work_dir!r}, True)"
                with contextlib.suppress(Exception):
                    async for _ in self._execute(code, timeout=5, silent=True):
                        pass
            await self._disconnect()
            await self.gateway.call("DELETE", f"/api/kernels/{quote(self.id)}")
        except SandboxError:
            log.warning("sandbox %s: deleting the kernel failed", self.id, exc_info=True)


class RemoteBackend:
    """Kernels on one gateway. Its sandboxes live outside this process: any replica may ``attach`` to them."""

    name = "remote"
    shared = True

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.gateway = _Gateway(config)
        self.live: dict[str, RemoteSandbox] = {}
        self.ssl_context: Any = None
        if urlsplit(config.url).scheme == "https":
            import ssl

            if isinstance(config.verify, str):
                self.ssl_context = ssl.create_default_context(cafile=config.verify)
            elif config.verify:
                self.ssl_context = ssl.create_default_context()
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self.ssl_context = ctx

    def describe(self) -> dict[str, Any]:
        parts = urlsplit(self.config.url)
        return {
            "backend": self.name,
            "gateway": f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}",
            "kernel_name": self.config.kernel_name,
            "isolation": "provided by the gateway (kernel pods or containers); the service jails nothing",
            "live_sandboxes": len(self.live),
        }

    async def start(self, keep: Collection[str] = ()) -> dict[str, int]:
        # Kernels on the gateway may belong to other replicas: nothing is removed.
        return {}

    def workdir_of(self, sandbox_id: str) -> Path | None:
        return None

    async def discard(self, sandbox_id: str) -> None:
        return None

    async def reap(self) -> dict[str, int]:
        return {}

    async def layer_target(self) -> LayerTarget:
        return native_target()

    async def create(
        self,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        layers: Sequence[Path] = (),
    ) -> RemoteSandbox:
        if layers:
            raise SandboxError("the remote backend cannot mount package layers")
        body = {"name": self.config.kernel_name, "env": kernel_env(self.config, limits, labels or {})}
        status, answer = await self.gateway.call(
            "POST", "/api/kernels", body=body, timeout=self.config.launch_timeout_s + self.config.request_timeout_s
        )
        if status not in (200, 201) or not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise SandboxError(f"the gateway did not start a kernel ({status}): {_message(answer)}")
        sandbox = RemoteSandbox(self, answer["id"][:128], limits, env or {})
        self.live[sandbox.id] = sandbox
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def attach(self, sandbox_id: str) -> RemoteSandbox:
        """A sandbox for a kernel another replica created: the kernel must still be on the gateway."""
        if await self.gateway.kernel(sandbox_id) is None:
            raise SandboxError(f"kernel {sandbox_id}: {GONE}")
        sandbox = RemoteSandbox(self, sandbox_id, Limits(), {})
        try:
            await sandbox.start(setup=False)
        except BaseException:
            await sandbox._disconnect()
            raise
        self.live[sandbox.id] = sandbox
        return sandbox

    async def stop(self) -> None:
        """Delete the kernels this process still holds; other replicas' kernels stay."""
        for sandbox in list(self.live.values()):
            await sandbox.close()
        await self.gateway.client.aclose()
