"""SessionManager: who owns which sandbox, its limits and expiry, and the executions that run in it.

Executions of a session run one at a time in submission order (a worker task per session, like a notebook).
Live state is in memory; every session's end and every execution's final result are written to the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from executor import workfiles
from executor.access.principal import key_of
from executor.errors import ApiError, not_found
from executor.results import ExecutionResult, ExecutionStatus, FileInfo, ResultBuilder
from executor.settings import Settings
from executor.store import ExecutionRow, SessionRow, Store
from sandboxes.base import Backend, EndEvent, Limits, Sandbox, SandboxError
from sandboxes.pool import Pool

log = logging.getLogger(__name__)

SessionStatus = Literal["idle", "busy", "dead", "expired", "closed"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Finished results are written in batches this often: one transaction per burst, off the cells' path.
_FLUSH_INTERVAL_S = 0.2
# Finished executions kept in memory per session (older ones are served from the store).
_KEEP_EXECUTIONS = 64
_MAX_QUEUED = 100


class LimitsIn(BaseModel):
    """Requested limits; anything left out takes the service default."""

    timeout_s: float | None = Field(None, gt=0, description="Default wall time of a cell, seconds.")
    memory_mb: int | None = Field(None, ge=64, description="Memory of the sandbox, MiB.")
    cpus: float | None = Field(None, gt=0, description="CPU cores.")
    pids: int | None = Field(None, ge=16, description="Processes and threads.")


class SessionLimits(BaseModel):
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int


class SessionCreate(BaseModel):
    limits: LimitsIn | None = None
    ttl_s: int | None = Field(None, ge=10, description="Idle time after which the session is culled, seconds.")
    env: dict[str, str] | None = Field(None, description="Environment variables for the kernel.")
    backend: Literal["local", "docker"] | None = Field(
        None, description="Sandbox backend, among those the admin allows; the service default if omitted."
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        if env is None:
            return env
        if len(env) > 64:
            raise ValueError("at most 64 environment variables")
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if len(value) > 8192 or "\x00" in value:
                raise ValueError(f"the value of {name} is longer than 8192 characters or contains NUL")
        return env


class SessionInfo(BaseModel):
    id: str
    owner: str = Field(description="The principal that owns it: a key id, or key id/end-user id.")
    backend: str
    status: SessionStatus
    reason: str | None = Field(None, description="Why the session is dead or expired.")
    created_at: datetime
    expires_at: datetime
    limits: SessionLimits
    jail: str | None = None
    sandbox_id: str | None = Field(None, description="The sandbox (container label executor.sandbox) it runs in.")


class ExecutionAccepted(BaseModel):
    id: str
    session_id: str
    status: ExecutionStatus


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Execution:
    """One cell: its queue position, live events for streaming, and its result once done."""

    id: str
    session_id: str
    owner: str
    code: str
    timeout_s: float
    builder: ResultBuilder
    status: ExecutionStatus = "queued"
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    result: ExecutionResult | None = None
    cancel_requested: bool = False
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        self.history.append((name, payload))
        for queue in self.subscribers:
            queue.put_nowait((name, payload))

    def snapshot(self) -> ExecutionResult:
        """The result so far: final once done, else the status with what has arrived."""
        if self.result is not None:
            return self.result
        partial = self.builder.snapshot(self.status)
        partial.started_at = self.started_at
        return partial

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Everything that already happened, then each new event until ``done``."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        # Replay and subscribe with no await in between, so no event falls in the gap.
        replay = list(self.history)
        finished = self.done.is_set()
        if not finished:
            self.subscribers.add(queue)
        try:
            for item in replay:
                yield item
            if finished:
                return
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
                if item[0] == "done":
                    return
        finally:
            self.subscribers.discard(queue)


@dataclass(eq=False)
class Session:
    id: str
    owner: str
    backend: str
    limits: SessionLimits
    ttl_s: int
    sandbox: Sandbox
    created_at: datetime = field(default_factory=_now)
    last_active: datetime = field(default_factory=_now)
    status: SessionStatus = "idle"
    reason: str | None = None
    queue: asyncio.Queue[Execution] = field(default_factory=asyncio.Queue)
    executions: OrderedDict[str, Execution] = field(default_factory=OrderedDict)
    current: Execution | None = None
    worker: asyncio.Task[None] | None = None

    @property
    def expires_at(self) -> datetime:
        return self.last_active + timedelta(seconds=self.ttl_s)

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            owner=self.owner,
            backend=self.backend,
            status=self.status,
            reason=self.reason,
            created_at=self.created_at,
            expires_at=self.expires_at,
            limits=self.limits,
            jail=getattr(self.sandbox, "jail", None),
            sandbox_id=self.sandbox.id,
        )


class SessionManager:
    """Creates, finds, runs and ends sessions. One per app (``app.state.sessions``)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: dict[str, Backend],
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends = backends
        self.unavailable = unavailable or {}
        default = self._sandbox_limits(self._resolve_limits(None))
        self.pools = {
            name: Pool(backend, default, settings.pool_size, may_grow=self._has_room)
            for name, backend in backends.items()
        }
        self.sessions: dict[str, Session] = {}
        self._starting: dict[str, int] = {}  # principal -> sessions being created
        self._culler: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._unsaved: list[ExecutionRow] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Record that sessions of an earlier run are gone, and start the idle culler."""
        ids = await self.store.end_live_sessions("the service restarted; its kernel is gone")
        if ids:
            log.info("marked %d sessions of an earlier run dead", len(ids))
        await self.store.fail_unfinished_executions("the service restarted during this execution")
        for pool in self.pools.values():
            pool.refill()
        self._culler = asyncio.create_task(self._cull_loop())

    async def stop(self) -> None:
        """Stop every kernel and remove every work dir (graceful shutdown)."""
        if self._culler is not None:
            self._culler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._culler
        await asyncio.gather(*(pool.close() for pool in self.pools.values()), return_exceptions=True)
        await asyncio.gather(
            *(self.end(s, "dead", "the service stopped") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _save_result(self, row: ExecutionRow) -> None:
        self._unsaved.append(row)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(_FLUSH_INTERVAL_S)
        await self._flush()

    async def _flush(self) -> None:
        rows, self._unsaved = self._unsaved, []
        if rows:
            try:
                await self.store.add_all(rows)
            except Exception:
                log.exception("could not store %d execution results", len(rows))

    def _write(self, coro: Any) -> None:
        # Store writes run beside the request path; stop() waits for them, so nothing is lost on shutdown.
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- sessions --------------------------------------------------------------------------------------

    def _resolve_limits(self, req: LimitsIn | None) -> SessionLimits:
        s = self.settings
        req = req or LimitsIn()
        values = {
            "timeout_s": (req.timeout_s, s.default_timeout_s, s.max_timeout_s),
            "memory_mb": (req.memory_mb, s.default_memory_mb, s.max_memory_mb),
            "cpus": (req.cpus, s.default_cpus, s.max_cpus),
            "pids": (req.pids, s.default_pids, s.max_pids),
        }
        out: dict[str, Any] = {}
        for name, (asked, default, maximum) in values.items():
            if asked is not None and asked > maximum:
                raise ApiError(
                    400, "limit_too_high", f"limits.{name} is {asked}; this service allows at most {maximum}",
                    field=f"limits.{name}",
                )  # fmt: skip
            out[name] = asked if asked is not None else default
        return SessionLimits(**out)

    def _sandbox_limits(self, limits: SessionLimits) -> Limits:
        return Limits(
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            pids=limits.pids,
            file_size_mb=self.settings.max_file_size_mb,
            open_files=self.settings.max_open_files,
        )

    def _in_use(self) -> int:
        """Sandboxes on this host: live sessions, sessions being created, and pooled ones."""
        live = sum(1 for s in self.sessions.values() if s.status in ("idle", "busy"))
        return live + sum(self._starting.values()) + sum(len(p) for p in self.pools.values())

    def _has_room(self) -> bool:
        return self._in_use() < self.settings.max_sessions

    def _check_capacity(self, owner: str, pooled: bool) -> None:
        # Handing out a pooled sandbox adds nothing to the host's load: it was counted already.
        if self._in_use() - (1 if pooled else 0) >= self.settings.max_sessions:
            raise ApiError(
                429, "host_busy", f"this host runs its maximum of {self.settings.max_sessions} sessions; retry later",
                headers={"Retry-After": "5"},
            )  # fmt: skip
        # (a pooled hand-out still counts against the owner's own limits)
        live = [s.owner for s in self.sessions.values() if s.status in ("idle", "busy")]
        mine = live.count(owner) + self._starting.get(owner, 0)
        if mine >= self.settings.max_sessions_per_principal:
            raise ApiError(
                429, "too_many_sessions",
                f"you have {self.settings.max_sessions_per_principal} live sessions, the most allowed; "
                "delete one or wait for one to expire",
                headers={"Retry-After": "10"},
            )  # fmt: skip
        key = key_of(owner)
        of_key = sum(1 for o in live if key_of(o) == key)
        of_key += sum(n for o, n in self._starting.items() if key_of(o) == key)
        if of_key >= self.settings.max_sessions_per_key:
            raise ApiError(
                429, "too_many_sessions_for_key",
                f"this API key has {self.settings.max_sessions_per_key} live sessions across its users, the most "
                "allowed; retry when one ends",
                headers={"Retry-After": "10"},
            )  # fmt: skip

    async def create(self, owner: str, req: SessionCreate) -> Session:
        """Start a sandbox for ``owner``; 429 when the host or the owner is at capacity."""
        limits = self._resolve_limits(req.limits)
        ttl = req.ttl_s if req.ttl_s is not None else self.settings.default_ttl_s
        if ttl > self.settings.max_ttl_s:
            raise ApiError(
                400, "ttl_too_high", f"ttl_s is {ttl}; this service allows at most {self.settings.max_ttl_s}",
                field="ttl_s",
            )  # fmt: skip
        name = req.backend or self.settings.backend
        if name not in self.settings.backends:
            raise ApiError(
                400, "backend_not_allowed",
                f"backend {name!r} is not offered here; choose one of {', '.join(self.settings.backends)}",
                field="backend",
            )  # fmt: skip
        if name in self.unavailable:
            raise ApiError(503, "backend_unavailable", f"backend {name!r} is unavailable: {self.unavailable[name]}")
        wanted = self._sandbox_limits(limits)
        pool = self.pools[name]
        poolable = pool.fits(wanted, req.env) and bool(pool.ready)
        self._check_capacity(owner, poolable)
        sandbox = pool.take() if poolable else None
        session_id = _new_id()
        if sandbox is None:
            self._starting[owner] = self._starting.get(owner, 0) + 1
            try:
                # Pooled sandboxes were made before their session existed; fresh ones carry its name.
                labels = {"executor.session": session_id, "executor.owner": owner}
                sandbox = await self.backends[name].create(wanted, req.env, labels)
            except SandboxError as exc:
                log.warning("sandbox start failed: %s", exc)
                raise ApiError(503, "sandbox_failed", f"the sandbox could not start: {exc}") from None
            finally:
                self._starting[owner] -= 1
        session = Session(id=session_id, owner=owner, backend=name, limits=limits, ttl_s=ttl, sandbox=sandbox)
        self.sessions[session.id] = session
        session.worker = asyncio.create_task(self._work(session))
        self._write(
            self.store.add(
                SessionRow(
                    id=session.id,
                    owner=owner,
                    backend=session.backend,
                    status=session.status,
                    limits=limits.model_dump(),
                    ttl_s=ttl,
                    created_at=session.created_at,
                    expires_at=session.expires_at,
                )
            )
        )
        return session

    def get(self, owner: str | None, session_id: str) -> Session:
        """The caller's live (or dead but not yet removed) session; 404 for anything else.
        ``owner=None`` is an admin's look: any owner's session."""
        session = self.sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            raise not_found("session", session_id)
        return session

    async def info(self, owner: str | None, session_id: str) -> SessionInfo:
        session = self.sessions.get(session_id)
        if session is not None and (owner is None or session.owner == owner):
            return session.info()
        row = await self.store.get_session(session_id)
        if row is None or (owner is not None and row.owner != owner) or row.status == "closed":
            raise not_found("session", session_id)
        return SessionInfo(
            id=row.id,
            owner=row.owner,
            backend=row.backend,
            status=row.status,  # type: ignore[arg-type]
            reason=row.reason,
            created_at=row.created_at,
            expires_at=row.expires_at,
            limits=SessionLimits(**row.limits),
        )

    def list(self, owner: str | None) -> list[SessionInfo]:
        """The owner's live sessions; every owner's with ``owner=None`` (admins)."""
        return [s.info() for s in self.sessions.values() if owner is None or s.owner == owner]

    async def restart(self, owner: str, session_id: str) -> Session:
        """A fresh kernel for the session, its files kept; also how a dead session is brought back."""
        session = self.get(owner, session_id)
        if session.status == "busy" or session.current is not None or not session.queue.empty():
            raise ApiError(409, "session_busy", "a cell is running or queued; cancel it before restarting")
        try:
            await session.sandbox.restart()
        except SandboxError as exc:
            session.status = "dead"
            session.reason = f"restart failed: {exc}"
            self._write(self.store.set_session_status(session.id, "dead", session.reason))
            raise ApiError(503, "sandbox_failed", f"the kernel could not restart: {exc}") from None
        session.status = "idle"
        session.reason = None
        session.last_active = _now()
        self._write(self.store.set_session_status(session.id, "idle", None))
        return session

    async def delete(self, owner: str | None, session_id: str) -> None:
        """End a session; ``owner=None`` lets an admin end anyone's."""
        session = self.get(owner, session_id)
        await self.end(session, "closed", "deleted by its owner" if owner else "deleted by an admin")

    async def end(self, session: Session, status: SessionStatus, reason: str) -> None:
        """Stop the worker, fail what is queued, kill the sandbox and remove its work dir."""
        if session.id not in self.sessions:
            return
        del self.sessions[session.id]
        # Read before the worker is cancelled: its `finally` clears `current`, and the running execution
        # must still be finished, or a client waiting on it would wait forever.
        running = session.current
        if running is not None:
            running.cancel_requested = True
        if session.worker is not None:
            session.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.worker
        session.status = status
        session.reason = reason
        await session.sandbox.close()
        pending = [running] if running else []
        while not session.queue.empty():
            pending.append(session.queue.get_nowait())
        for ex in pending:
            if ex is not None and not ex.done.is_set():
                self._finish(ex, EndEvent(status="dead", reason=f"the session ended: {reason}"), "cancelled")
        # Awaited, not in the background: once DELETE answers, a GET must find the session closed, not live.
        try:
            await self.store.set_session_status(session.id, status, reason)
        except Exception:
            log.exception("could not record the end of session %s", session.id)

    async def _cull_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + self.settings.reap_interval_s
        while True:
            await asyncio.sleep(self.settings.cull_interval_s)
            if loop.time() >= next_reap:
                next_reap = loop.time() + self.settings.reap_interval_s
                for backend in self.backends.values():
                    with contextlib.suppress(Exception):
                        reaped = await backend.reap()
                        if any(reaped.values()):
                            log.warning("%s: removed sandboxes no session owned: %s", backend.name, reaped)
            for pool in self.pools.values():
                pool.refill()
            now = _now()
            for session in list(self.sessions.values()):
                if session.status != "busy" and session.queue.empty() and session.expires_at <= now:
                    log.info("culling idle session %s", session.id)
                    with contextlib.suppress(Exception):
                        await self.end(session, "expired", f"idle for more than {session.ttl_s} s")

    # -- executions ------------------------------------------------------------------------------------

    def submit(self, session: Session, code: str, timeout_s: float | None) -> Execution:
        if session.status == "dead":
            raise ApiError(409, "session_dead", f"the session is dead: {session.reason}; create a new one")
        if timeout_s is not None and timeout_s > self.settings.max_timeout_s:
            raise ApiError(
                400, "timeout_too_high",
                f"timeout_s is {timeout_s}; this service allows at most {self.settings.max_timeout_s}",
                field="timeout_s",
            )  # fmt: skip
        if session.queue.qsize() >= _MAX_QUEUED:
            raise ApiError(
                429, "queue_full", f"{_MAX_QUEUED} executions are already queued in this session",
                headers={"Retry-After": "5"},
            )  # fmt: skip
        ex = Execution(
            id=_new_id(),
            session_id=session.id,
            owner=session.owner,
            code=code,
            timeout_s=timeout_s if timeout_s is not None else session.limits.timeout_s,
            builder=ResultBuilder(
                "", session.id, max_stream=self.settings.max_stream_bytes, max_outputs=self.settings.max_outputs_bytes
            ),
        )
        ex.builder.execution_id = ex.id
        session.executions[ex.id] = ex
        while len(session.executions) > _KEEP_EXECUTIONS:
            oldest = next(iter(session.executions.values()))
            if not oldest.done.is_set():
                break
            session.executions.popitem(last=False)
        session.last_active = _now()
        session.queue.put_nowait(ex)
        ex.publish("status", {"status": "queued"})
        return ex

    async def get_execution(self, owner: str, session_id: str, execution_id: str) -> Execution | ExecutionResult:
        """The live Execution, or the stored final result of an older one; 404 across owners."""
        session = self.sessions.get(session_id)
        if session is not None and session.owner == owner:
            ex = session.executions.get(execution_id)
            if ex is not None:
                return ex
        row = next((r for r in self._unsaved if r.id == execution_id), None)
        row = row or await self.store.get_execution(execution_id)
        if row is None or row.owner != owner or row.session_id != session_id:
            raise not_found("execution", execution_id)
        return ExecutionResult.model_validate(row.result)

    async def cancel(self, session: Session, ex: Execution) -> None:
        """Queued: it never runs. Running: interrupt; if the kernel ignores that, kill it after a grace."""
        if ex.done.is_set():
            return
        ex.cancel_requested = True
        if session.current is ex:
            # An interrupt that lands before the kernel has begun the cell is lost, so repeat it while this
            # same cell is still the one running (the next cell is only sent after this one's end is seen).
            for _ in range(20):
                if ex.done.is_set() or session.current is not ex:
                    break
                await session.sandbox.interrupt()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ex.done.wait()), 0.5)
        else:
            # Still queued: it ends now; the worker skips it when its turn comes.
            self._finish(ex, EndEvent(status="ok"), "cancelled")

    async def _work(self, session: Session) -> None:
        while True:
            ex = await session.queue.get()
            if ex.done.is_set():
                continue
            if ex.cancel_requested:
                self._finish(ex, EndEvent(status="ok"), "cancelled")
                continue
            if session.status == "dead":
                self._finish(ex, EndEvent(status="dead", reason=session.reason), "error")
                continue
            session.current = ex
            try:
                await self._run(session, ex)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not take the session's worker down with it
                log.exception("execution %s failed", ex.id)
                self._finish(ex, EndEvent(status="dead", reason=f"internal error: {exc}"), "error")
            finally:
                session.current = None
                session.last_active = _now()

    async def _run(self, session: Session, ex: Execution) -> None:
        ex.status = "running"
        ex.started_at = _now()
        session.status = "busy"
        ex.publish("status", {"status": "running"})
        workdir = session.sandbox.workdir
        before = await workfiles.scan_async(workdir)
        end = EndEvent(status="dead", reason="no end event from the sandbox", kernel_alive=False)
        async for event in session.sandbox.execute(ex.code, timeout=ex.timeout_s):
            if isinstance(event, EndEvent):
                end = event
                break
            forwarded = ex.builder.add(event)
            if forwarded is not None:
                ex.publish(*forwarded)
        status: ExecutionStatus
        if end.status == "dead":
            status = "error"
        elif ex.cancel_requested and (end.status == "timeout" or _interrupted(ex)):
            status = "cancelled"
        else:
            status = end.status  # ok | error | timeout
        if not end.kernel_alive or not session.sandbox.alive:
            session.status = "dead"
            session.reason = end.reason or session.sandbox.exit_reason or "the kernel died"
            self._write(self.store.set_session_status(session.id, "dead", session.reason))
        else:
            session.status = "idle"
        files: list[FileInfo] = []
        with contextlib.suppress(OSError):
            after = await workfiles.scan_async(workdir)
            changed = workfiles.changed(before, after)
            if changed:
                files = await asyncio.to_thread(self._file_infos, session, changed)
        self._finish(ex, end, status, files)

    def _file_infos(self, session: Session, entries: Iterable[workfiles.Entry]) -> list[FileInfo]:
        budget = self.settings.max_inline_files_bytes
        out: list[FileInfo] = []
        for entry in entries:
            info = FileInfo(path=entry.path, size=entry.size, mime_type=entry.mime_type)
            if entry.size <= min(self.settings.inline_file_max_bytes, budget):
                try:
                    data = workfiles.read_bytes(session.sandbox.workdir, workfiles.clean_path(entry.path), budget)
                except (OSError, ValueError):
                    data = None
                if data is not None:
                    info.data = base64.b64encode(data).decode()
                    budget -= len(data)
            if info.data is None:
                info.url = f"/api/v1/sessions/{session.id}/files/{entry.path}"
            out.append(info)
        return out

    def _finish(
        self, ex: Execution, end: EndEvent, status: ExecutionStatus, files: list[FileInfo] | None = None
    ) -> None:
        result = ex.builder.finish(end, status=status)
        result.files = files or []
        result.started_at = ex.started_at
        result.finished_at = _now()
        if ex.started_at is not None:
            result.duration_ms = round((result.finished_at - ex.started_at).total_seconds() * 1000, 3)
        ex.result = result
        ex.status = status
        dumped = result.model_dump(mode="json")
        ex.publish("done", dumped)
        for queue in ex.subscribers:
            queue.put_nowait(None)
        ex.done.set()
        self._save_result(
            ExecutionRow(
                id=ex.id,
                session_id=ex.session_id,
                owner=ex.owner,
                status=status,
                result=dumped,
                created_at=ex.created_at,
            )
        )


def _interrupted(ex: Execution) -> bool:
    error = ex.builder.error
    return error is not None and error.name == "KeyboardInterrupt"
