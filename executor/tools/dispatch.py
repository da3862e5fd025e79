"""ToolHosts: the sandboxes that run tool modules, and every operation the service asks of them.

The service never imports a tool file. Each operation is one silent cell in a sandbox that runs the tool host
(``sandboxes/runtime/toolhost.py``); the host answers with display messages of one vendor MIME type, and its
``__event_call__`` asks through the kernel's stdin channel. Everything it sends is untrusted: parsed defensively,
counted against the call's caps, never trusted for anything beyond this one call of this one user.

A call runs in a sandbox dedicated to (tool id, content hash, principal): kept warm for that principal's next
call (the module stays imported, ``Tools()`` stays instantiated, as Open WebUI keeps its module cache), never
shared with anyone else, closed when the tool changes or is deleted, after ``tool_sandbox_idle_s`` unused, or
when it times out. The sandboxes are leased from the session manager, so they count against the same host,
principal and key limits as sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from executor.access.principal import Principal
from executor.egress.service import EgressService
from executor.errors import DomainError, NotFound, RateLimited, Unavailable, Unprocessable
from executor.sessions import SessionManager
from executor.settings import Settings
from executor.toolresult import ToolError, ToolOutput, ToolResult
from executor.tools.layers import LayerBuilder
from executor.tools.records import Extracted, ToolLoadError, ToolRecord, ValvesInvalid, ValvesKind
from executor.tools.requirements import parse_requirements
from sandboxes.base import (
    DisplayEvent,
    EndEvent,
    ErrorEvent,
    InputRequestEvent,
    Sandbox,
    SandboxBusy,
    SandboxError,
    StreamEvent,
)

log = logging.getLogger(__name__)

MIME = "application/vnd.executor.toolhost+json"
TRUNCATED = "\n[... output truncated]"
# Dunder parameters the host injects; a caller's arguments never carry them.
RESERVED_PREFIX = "__"

HostKey = tuple[str, str, str]  # tool id, content hash, principal id
Publish = Callable[[str, dict[str, Any]], None]
BUILD_LOG_LINES = 200


@dataclass
class BuildStatus:
    """A tool's requirements layer as it is being installed (``GET /api/v1/tools/id/{id}/build``)."""

    tool_id: str
    principal_id: str
    requirements: list[str]
    status: str = "building"  # building | ready | failed
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=BUILD_LOG_LINES))
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None


class ToolTimeout(DomainError):
    """The operation ran past its time; the sandbox was closed (no process is left)."""


@dataclass
class OpOutcome:
    """What one host operation produced: its last word (done/failed), and the output on the way."""

    kind: str = "failed"
    body: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    end: EndEvent | None = None


@dataclass(eq=False)
class _Host:
    key: HostKey
    sandbox: Sandbox
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = 0.0
    loaded: bool = False


@dataclass(eq=False)
class _Pending:
    """An ``__event_call__`` waiting for its reply."""

    principal_id: str
    tool_id: str
    future: asyncio.Future[dict[str, Any]]


def host_module(sandbox: Sandbox) -> str:
    """The tool host's module name in this sandbox's kernel (the runtime package is bound in under one name
    in a jail or container, and is the service's own package in an unjailed local kernel)."""
    return ("sandboxes.runtime" if sandbox.jail == "none" else "sandbox_runtime") + ".toolhost"


def op_code(sandbox: Sandbox, op: str, payload: dict[str, Any]) -> str:
    """The cell that runs one host operation: the payload is a JSON text inside a Python string literal
    (``json.dumps`` of a str is a valid literal), so nothing in it is ever parsed as code."""
    text = json.dumps(payload, separators=(",", ":"), default=str)
    return f"__import__({host_module(sandbox)!r}, fromlist=['_']).{op}({json.dumps(text)})"


def _traceback_tail(body: dict[str, Any]) -> list[str]:
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    lines = error.get("traceback") if isinstance(error, dict) else None
    if not isinstance(lines, list):
        return []
    return [str(line)[:1000] for line in lines[-20:]]


def _error_of(body: dict[str, Any]) -> tuple[str, str]:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("name", "Error"))[:200], str(error.get("value", ""))[:4000]
    return "ToolHostError", "the tool host gave no answer"


def user_info(principal: Principal) -> dict[str, Any]:
    """``__user__`` without valves: the end user a chat backend named, else the key itself."""
    user = principal.end_user
    if user is not None:
        return {"id": user.id, "name": user.name or user.id, "email": user.email or "", "role": user.role or "user"}
    return {"id": principal.user_id, "name": principal.key_name, "email": "", "role": principal.role}


class ToolHosts:
    """One per app: implements :class:`executor.tools.records.ToolRuntime` and runs calls."""

    def __init__(
        self,
        settings: Settings,
        manager: SessionManager,
        *,
        layers: LayerBuilder | None = None,
        restricted_imports: list[str] | None = None,
        egress: EgressService | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.egress = egress
        self.layers = layers
        self.builds: dict[str, BuildStatus] = {}
        self.restricted_imports = restricted_imports
        self.backend = settings.tool_backend or settings.backend
        self._hosts: dict[HostKey, _Host] = {}
        self._making: dict[HostKey, asyncio.Lock] = {}
        self._pending: dict[str, _Pending] = {}
        self._culler: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._culler = asyncio.create_task(self._cull_loop())

    async def close(self) -> None:
        """Close every tool sandbox (shutdown)."""
        self._closed = True
        if self._culler is not None:
            self._culler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._culler
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._drop(h) for h in list(self._hosts.values())), return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a call that outlives its request (a stream whose listener left); ended by ``close``."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def live(self) -> int:
        return len(self._hosts)

    def hosts_of(self, tool_id: str) -> list[HostKey]:
        """The keys of this tool's warm sandboxes (for tests and operators)."""
        return [k for k in self._hosts if k[0] == tool_id]

    async def _cull_loop(self) -> None:
        idle = self.settings.tool_sandbox_idle_s
        while True:
            await asyncio.sleep(min(30.0, max(idle / 4, 0.2)))
            now = time.monotonic()
            for host in list(self._hosts.values()):
                if not host.lock.locked() and now - host.last_used > idle:
                    await self._drop(host)

    async def _drop(self, host: _Host) -> None:
        if self._hosts.get(host.key) is host:
            del self._hosts[host.key]
        try:
            await self.manager.release(host.sandbox)
        except Exception:
            log.warning("closing tool sandbox %s failed", host.sandbox.id, exc_info=True)

    async def forget(self, tool_id: str) -> None:
        """Close every sandbox of this tool (it changed or was deleted); calls running in them end."""
        await asyncio.gather(
            *(self._drop(h) for k, h in list(self._hosts.items()) if k[0] == tool_id), return_exceptions=True
        )

    # -- sandboxes -------------------------------------------------------------------------------------

    async def _layers(self, requirements: list[str], status: BuildStatus | None = None) -> list[Path]:
        """The read-only package layer of these requirements, built (network, host-side, wheels only) the first
        time any tool asks for this set, then reused. RequirementsBuildFailed carries pip's last lines."""
        if not requirements:
            return []
        reqs = parse_requirements(requirements)
        if not reqs.items:
            return []
        if self.layers is None:
            raise Unavailable("requirements_unavailable", "this service installs no tool requirements")
        backend = self.manager.backends.get(self.backend)
        if backend is None:
            raise Unavailable("backend_unavailable", f"backend {self.backend!r} is unavailable")
        target = await backend.layer_target()

        def progress(line: str) -> None:
            if status is not None:
                status.lines.append(line[:1000])

        layer = await self.layers.ensure(reqs, progress, target=target)
        return [layer.path]

    async def _lease(self, owner: str, tool_id: str, layers: Sequence[Path] = ()) -> Sandbox:
        """A fresh sandbox for ``owner`` under the tool's egress policy. When the owner or the host is at its
        limit, the least recently used idle tool sandbox (the owner's own first) is closed and the lease tried
        once more."""
        policy = await self.egress.tool_policy(tool_id) if self.egress is not None else None
        purpose = f"tool:{tool_id}"
        try:
            return await self.manager.lease(owner, backend=self.backend, layers=layers, egress=policy, purpose=purpose)
        except RateLimited as exc:
            mine = exc.code in ("too_many_sessions", "too_many_sessions_for_key")
            victim = self._idlest(owner if exc.code == "too_many_sessions" else None, key_wide=mine)
            if victim is None:
                raise
            await self._drop(victim)
            return await self.manager.lease(owner, backend=self.backend, layers=layers, egress=policy, purpose=purpose)

    def _idlest(self, owner: str | None, *, key_wide: bool = False) -> _Host | None:
        idle = [h for h in self._hosts.values() if not h.lock.locked()]
        if owner is not None:
            idle = [h for h in idle if h.key[2] == owner]
        elif key_wide:
            idle = idle  # any of this service's warm tool sandboxes: the key limit spans its users
        return min(idle, key=lambda h: h.last_used, default=None)

    async def _host(self, tool: ToolRecord, principal: Principal) -> _Host:
        """The principal's warm sandbox for this version of the tool, started (and the module loaded) if needed."""
        key: HostKey = (tool.id, tool.content_hash, principal.id)
        host = self._hosts.get(key)
        if host is not None and host.sandbox.alive:
            return host
        making = self._making.setdefault(key, asyncio.Lock())
        async with making:
            host = self._hosts.get(key)
            if host is not None and host.sandbox.alive:
                return host
            if host is not None:
                await self._drop(host)
            # An older version of this tool for this principal: no longer needed.
            for old in [h for k, h in self._hosts.items() if k[0] == tool.id and k[2] == principal.id]:
                await self._drop(old)
            mine = sorted((h for h in self._hosts.values() if h.key[2] == principal.id), key=lambda h: h.last_used)
            for extra in mine[: max(0, len(mine) - self.settings.tool_sandboxes_per_principal + 1)]:
                if not extra.lock.locked():
                    await self._drop(extra)
            sandbox = await self._lease(principal.id, tool.id, await self._layers(tool.requirements))
            host = _Host(key=key, sandbox=sandbox, last_used=time.monotonic())
            self._hosts[key] = host
        self._making.pop(key, None)
        return host

    async def _ensure_loaded(self, host: _Host, tool: ToolRecord) -> None:
        """Import the module in the host once (caller holds ``host.lock``); ToolLoadError if it cannot be."""
        if host.loaded:
            return
        try:
            out = await self._op(host.sandbox, "load", self._source(tool.id, tool.content, tool.restricted),
                                 timeout=self.settings.tool_import_timeout_s)  # fmt: skip
        except ToolTimeout as exc:
            await self._drop(host)
            raise ToolLoadError(exc.message, code="tool_import_timeout") from None
        if out.kind != "done":
            await self._drop(host)
            name, value = _error_of(out.body)
            raise ToolLoadError(f"{name}: {value}", _traceback_tail(out.body))
        host.loaded = True

    def _source(self, tool_id: str, content: str, restricted: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"tool_id": tool_id, "source": content, "restricted": restricted}
        if self.restricted_imports is not None:
            payload["allowed_imports"] = self.restricted_imports
        return payload

    # -- one operation ---------------------------------------------------------------------------------

    async def _op(
        self,
        sandbox: Sandbox,
        op: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        publish: Publish | None = None,
        ask: Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]] | None = None,
    ) -> OpOutcome:
        """Run one host operation and fold what comes back. Raises ToolTimeout (the sandbox is then dead)."""
        s = self.settings
        out = OpOutcome()
        answered = False
        event_bytes = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        code = op_code(sandbox, op, payload)
        try:
            events = sandbox.execute(code, timeout=timeout, silent=True, allow_stdin=ask is not None)
        except SandboxBusy as exc:
            raise SandboxError(str(exc)) from None
        async for event in events:
            if isinstance(event, StreamEvent):
                current = out.stdout if event.name == "stdout" else out.stderr
                room = s.max_stream_bytes - len(current)
                text = event.text
                if len(text) > room:
                    text = text[: max(room, 0)] + (TRUNCATED if room > 0 else "")
                    out.truncated = True
                if text:
                    if event.name == "stdout":
                        out.stdout += text
                    else:
                        out.stderr += text
                    if publish is not None:
                        publish(event.name, {"text": text})
            elif isinstance(event, DisplayEvent) and not answered:
                message = event.data.get(MIME)
                if not isinstance(message, dict):
                    continue
                kind = message.get("kind")
                if kind in ("done", "failed"):
                    out.kind = str(kind)
                    out.body = message
                    answered = True
                elif kind == "event" and isinstance(message.get("event"), dict):
                    size = len(json.dumps(message["event"], default=str))
                    if len(out.events) >= s.tool_max_events or event_bytes + size > s.tool_max_result_bytes:
                        out.truncated = True
                        continue
                    event_bytes += size
                    out.events.append(message["event"])
                    if publish is not None:
                        publish("event", message["event"])
            elif isinstance(event, InputRequestEvent):
                reply: dict[str, Any]
                if ask is None:
                    reply = {"error": "no client is listening for __event_call__"}
                else:
                    try:
                        request = json.loads(event.prompt)
                    except ValueError:
                        request = None
                    if not isinstance(request, dict) or not isinstance(request.get("event"), dict):
                        reply = {"error": "the tool asked for input outside __event_call__"}
                    else:
                        reply = await ask(request["event"], max(deadline - loop.time(), 0.0))
                await sandbox.reply_input(json.dumps(reply, default=str))
            elif isinstance(event, ErrorEvent) and not answered:
                # The host itself failed (it reports tool errors as "failed"): keep what the kernel said.
                out.body = {"error": {"name": event.name, "value": event.value, "traceback": event.traceback}}
            elif isinstance(event, EndEvent):
                out.end = event
        if out.end is not None and out.end.status == "timeout":
            raise ToolTimeout("tool_timeout", f"the tool ran past {timeout:g} s and was stopped")
        if out.end is not None and out.end.status == "dead" and not answered:
            out.body = {"error": {"name": "SandboxDied", "value": out.end.reason or "the tool's sandbox died"}}
        return out

    # -- the registry's runtime ------------------------------------------------------------------------

    async def extract(
        self,
        tool_id: str,
        content: str,
        *,
        restricted: bool,
        requirements: list[str],
        principal: Principal | None = None,
    ) -> Extracted:
        """Import the file in a short-lived sandbox (its requirements installed first); its specs and valves
        schemas. ToolLoadError when it cannot be imported, RequirementsBuildFailed when pip fails."""
        layers: list[Path] = []
        if requirements:
            status = BuildStatus(tool_id, principal.id if principal else "", list(requirements))
            self.builds[tool_id] = status
            log.info("tool %s: installing requirements %s", tool_id, ", ".join(requirements))
            try:
                layers = await self._layers(requirements, status)
            except BaseException:
                status.status = "failed"
                raise
            else:
                status.status = "ready"
            finally:
                status.finished_at = datetime.now(UTC)
                log.info("tool %s: requirements %s", tool_id, status.status)
        sandbox = await self._lease(f"tool-registry/{tool_id}", tool_id, layers)
        try:
            try:
                out = await self._op(sandbox, "extract", self._source(tool_id, content, restricted),
                                     timeout=self.settings.tool_import_timeout_s)  # fmt: skip
            except ToolTimeout:
                raise ToolLoadError(
                    f"importing the tool took longer than {self.settings.tool_import_timeout_s:g} s "
                    "(EXECUTOR_TOOL_IMPORT_TIMEOUT_S); it was stopped",
                    code="tool_import_timeout",
                ) from None
        finally:
            await self.manager.release(sandbox)
        if out.kind != "done":
            name, value = _error_of(out.body)
            tail = _traceback_tail(out.body) or [f"{name}: {value}"]
            raise ToolLoadError(f"the tool could not be loaded: {name}: {value}", tail)
        specs = out.body.get("specs")
        if not isinstance(specs, list) or not all(isinstance(x, dict) for x in specs):
            raise ToolLoadError("the tool host returned no function specs")
        valves = out.body.get("valves_schema")
        user_valves = out.body.get("user_valves_schema")
        return Extracted(
            specs=specs,
            valves_schema=valves if isinstance(valves, dict) else None,
            user_valves_schema=user_valves if isinstance(user_valves, dict) else None,
        )

    async def _loaded_op(self, tool: ToolRecord, principal: Principal, op: str, payload: dict[str, Any]) -> OpOutcome:
        host = await self._host(tool, principal)
        async with host.lock:
            await self._ensure_loaded(host, tool)
            try:
                return await self._op(host.sandbox, op, payload, timeout=self.settings.tool_import_timeout_s)
            except ToolTimeout:
                await self._drop(host)
                raise
            finally:
                host.last_used = time.monotonic()

    async def validate_valves(
        self, tool: ToolRecord, principal: Principal, kind: ValvesKind, values: dict[str, Any]
    ) -> dict[str, Any]:
        out = await self._loaded_op(tool, principal, "validate_valves", {"kind": kind, "values": values})
        if out.kind == "done" and isinstance(out.body.get("values"), dict):
            validated: dict[str, Any] = out.body["values"]
            return validated
        errors = out.body.get("errors")
        if isinstance(errors, list) and errors:
            raise ValvesInvalid(kind, [e for e in errors[:50] if isinstance(e, dict)] or [{"msg": "invalid"}])
        name, value = _error_of(out.body)
        raise ValvesInvalid(kind, [{"loc": [], "msg": f"{name}: {value}"}])

    async def valves_spec(self, tool: ToolRecord, principal: Principal, kind: ValvesKind) -> dict[str, Any] | None:
        out = await self._loaded_op(tool, principal, "valves_spec", {"kind": kind, "user": user_info(principal)})
        schema = out.body.get("schema") if out.kind == "done" else None
        if out.kind != "done":
            # Dynamic options failed to resolve: the stored schema still describes the fields.
            stored = tool.valves_schema if kind == "valves" else tool.user_valves_schema
            return stored
        return schema if isinstance(schema, dict) else None

    # -- calls -----------------------------------------------------------------------------------------

    def check_arguments(self, tool: ToolRecord, function: str, arguments: dict[str, Any]) -> None:
        """NotFound for a function the tool does not have; Unprocessable naming an unknown, reserved or missing
        argument (the host injects ``__user__`` and the rest: a caller cannot pass them)."""
        spec = next((s for s in tool.specs if s.get("name") == function), None)
        if spec is None:
            raise NotFound("function_not_found", f"tool {tool.id!r} has no function {function!r}")
        raw = spec.get("parameters")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        props = params.get("properties")
        properties: dict[str, Any] = props if isinstance(props, dict) else {}
        for name in arguments:
            if name.startswith(RESERVED_PREFIX):
                raise Unprocessable(
                    "reserved_argument", f"arguments.{name}: parameters starting with '__' are set by the service",
                    field=f"arguments.{name}",
                )  # fmt: skip
            if name not in properties:
                raise Unprocessable(
                    "unknown_argument", f"arguments.{name}: {function} has no parameter {name!r}",
                    field=f"arguments.{name}",
                )  # fmt: skip
        for name in params.get("required") or []:
            if isinstance(name, str) and not name.startswith(RESERVED_PREFIX) and name not in arguments:
                raise Unprocessable(
                    "missing_argument", f"arguments.{name}: required by {function}", field=f"arguments.{name}"
                )

    async def call(
        self,
        tool: ToolRecord,
        principal: Principal,
        function: str,
        arguments: dict[str, Any],
        *,
        user_valves: dict[str, Any] | None,
        metadata: dict[str, Any] | None = None,
        publish: Publish | None = None,
        shape: Callable[[Any, str, int], tuple[Any, list[ToolOutput]]] | None = None,
    ) -> ToolResult:
        """Call ``function`` of ``tool`` as ``principal`` in their sandbox; the answer as a ToolResult.

        ``publish(name, payload)``, when given, receives ``stdout``/``stderr``/``event``/``event_call`` as they
        happen, and makes ``__event_call__`` available (answered through :meth:`reply`); without it the tool's
        ``__event_call__`` fails at once.
        """
        self.check_arguments(tool, function, arguments)
        started = datetime.now(UTC)
        clock = time.monotonic()
        meta = dict(metadata or {})
        user = {**user_info(principal)}
        payload = {
            "function": function,
            "arguments": arguments,
            "valves": tool.valves,
            "user_valves": user_valves or {},
            "user": user,
            "extras": {
                "__id__": tool.id,
                "__metadata__": {**meta, "tool_id": tool.id},
                "__messages__": meta.get("messages") or [],
                "__files__": meta.get("files") or [],
                "__model__": meta.get("model"),
                "__chat_id__": meta.get("chat_id"),
                "__message_id__": meta.get("message_id"),
                "__oauth_token__": None,
                "__request__": None,
            },
            "event_call": publish is not None,
        }
        call_ids: list[str] = []

        async def ask(event: dict[str, Any], remaining: float) -> dict[str, Any]:
            assert publish is not None
            call_id = secrets.token_urlsafe(12)
            call_ids.append(call_id)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[call_id] = _Pending(principal.id, tool.id, future)
            publish("event_call", {"call_id": call_id, "event": event})
            wait = min(self.settings.tool_event_call_timeout_s, remaining)
            try:
                return await asyncio.wait_for(future, wait)
            except TimeoutError:
                return {"error": f"no reply to __event_call__ within {wait:g} s"}
            finally:
                self._pending.pop(call_id, None)

        result = ToolResult(status="error", started_at=started, finished_at=started, duration_ms=0)
        host = await self._host(tool, principal)
        async with host.lock:
            try:
                await self._ensure_loaded(host, tool)
                out = await self._op(host.sandbox, "call", payload, timeout=self.settings.tool_call_timeout_s,
                                     publish=publish, ask=ask if publish is not None else None)  # fmt: skip
            except ToolTimeout as exc:
                await self._drop(host)
                result.error = ToolError(name="Timeout", value=exc.message)
                out = None
            except ToolLoadError as exc:
                result.error = ToolError(name="ToolLoadError", value=exc.message)
                out = None
            finally:
                host.last_used = time.monotonic()
            if out is not None and (out.end is None or out.end.status == "dead" or not host.sandbox.alive):
                await self._drop(host)
        if out is not None:
            result.stdout, result.stderr, result.events, result.truncated = (
                out.stdout, out.stderr, out.events, out.truncated
            )  # fmt: skip
            if out.kind == "done":
                result.status = "ok"
                value = out.body.get("result")
                if shape is not None:
                    result.result, result.outputs = shape(value, function, self.settings.tool_max_result_bytes)
                else:
                    result.result = value
            else:
                name, text = _error_of(out.body)
                result.error = ToolError(name=name, value=text)
        finished = datetime.now(UTC)
        result.finished_at = finished
        result.duration_ms = round((time.monotonic() - clock) * 1000, 3)
        return result

    def reply(self, principal: Principal, tool_id: str, call_id: str, answer: dict[str, Any]) -> None:
        """Deliver the answer to a pending ``__event_call__`` (``{"value": ...}`` or ``{"error": ...}``);
        NotFound unless it is this principal's, for this tool, and still waiting."""
        pending = self._pending.get(call_id)
        if pending is None or pending.principal_id != principal.id or pending.tool_id != tool_id:
            raise NotFound("event_call_not_found", f"no event call {call_id!r} is waiting for a reply")
        if not pending.future.done():
            pending.future.set_result(answer)
