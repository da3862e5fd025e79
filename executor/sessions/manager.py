"""SessionManager: who owns which sandbox, its limits and expiry, and the executions that run in it.

Executions of a session run one at a time in submission order (a worker task per session, like a notebook).
Live state is in memory; every session's sandbox and end, and every execution's final result, are written to the
store, so after a crash the sessions that were live are still listed (``dead``, ``service restarted``) with their
results and, where the backend kept them, their files, until their ttl.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import logging
import socket
import uuid
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from executor import workfiles
from executor.access.principal import key_of
from executor.egress.policy import SandboxPolicy
from executor.egress.service import EgressService
from executor.errors import Conflict, Invalid, NotFound, RateLimited, TooLarge, Unavailable
from executor.results import ErrorInfo, ExecutionResult, ExecutionStatus, FileInfo, ResultBuilder
from executor.sessions.log import ExecutionLog
from executor.sessions.persistence import Persistence
from executor.settings import Settings
from executor.store import SessionRow, Store
from sandboxes.base import Backend, EndEvent, Limits, Sandbox, SandboxBusy, SandboxError, instance_id
from sandboxes.pool import HostBusy, Pool, StartGate, StartQueueFull

log = logging.getLogger(__name__)

SessionStatus = Literal["idle", "busy", "dead", "expired", "closed"]
RESTARTED = "service restarted"
KILLED = "the cell ignored the interrupt and was killed"
# Finished executions kept in memory per session (older ones are served from the store), and how many of the
# newest finished ones keep their whole event log for late subscribers (older ones replay only ``done``).
_KEEP_EXECUTIONS = 64
_KEEP_LOGS = 4
_MAX_QUEUED = 100
# Interrupts are repeated this often until the cancel grace runs out (one landing before the cell began is lost).
_INTERRUPT_EVERY_S = 0.5
# How long cancel waits for the execution to end after the kill.
_AFTER_KILL_S = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class LimitsRequest:
    """Limits a client asked for; None takes the service default."""

    timeout_s: float | None = None
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    """What a new session is asked to be."""

    limits: LimitsRequest = field(default_factory=LimitsRequest)
    ttl_s: int | None = None
    env: dict[str, str] | None = None
    backend: str | None = None
    egress: SandboxPolicy | None = None  # None: the service default


class _NoHostDir(Exception):
    """The sandbox has no work dir on this host (a remote kernel)."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int

    def as_dict(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s, "memory_mb": self.memory_mb, "cpus": self.cpus, "pids": self.pids}


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as shown to its owner (live, or as the store remembers it)."""

    id: str
    owner: str
    backend: str
    status: SessionStatus
    reason: str | None
    created_at: datetime
    expires_at: datetime
    limits: SessionLimits
    jail: str | None = None
    sandbox_id: str | None = None
    ref: str | None = None
    egress: dict[str, Any] | None = None


@dataclass(eq=False)
class Execution:
    """One cell: its queue position, its event log for streaming, and its result once done."""

    id: str
    session_id: str
    owner: str
    code: str
    timeout_s: float
    builder: ResultBuilder
    log: ExecutionLog
    one_shot: bool = False
    status: ExecutionStatus = "queued"
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    # Set when the result is final; ``done`` (and ``status``) only once it is also stored.
    result: ExecutionResult | None = None
    result_json: str | None = None
    cancel_requested: bool = False
    files_refused: list[workfiles.Entry] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[EndEvent] | None = None
    abort: EndEvent | None = None
    canceller: asyncio.Task[None] | None = None

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        self.log.publish(name, payload)

    @property
    def finished(self) -> bool:
        """The result is final (it may still be on its way to the store)."""
        return self.result is not None

    def snapshot(self) -> ExecutionResult:
        """The result once done, else the status with what has arrived."""
        if self.done.is_set() and self.result is not None:
            return self.result
        partial = self.builder.snapshot(self.status)
        partial.started_at = self.started_at
        partial.truncated = partial.truncated or self.log.truncated
        return partial

    def answer_json(self) -> str:
        """The final result as JSON (dumped once, when it finished), or a snapshot while it runs."""
        if self.done.is_set() and self.result_json is not None:
            return self.result_json
        return self.snapshot().model_dump_json()


@dataclass(eq=False)
class Session:
    id: str
    owner: str
    backend: str
    limits: SessionLimits
    ttl_s: int
    sandbox: Sandbox | None
    sandbox_id: str | None = None
    ref: str | None = None
    # A session of an earlier run (the service restarted): no sandbox, its files (if kept) at kept_workdir.
    restored: bool = False
    kept_workdir: Path | None = None
    created_at: datetime = field(default_factory=_now)
    last_active: datetime = field(default_factory=_now)
    status: SessionStatus = "idle"
    reason: str | None = None
    restarting: bool = False
    queue: asyncio.Queue[Execution] = field(default_factory=asyncio.Queue)
    executions: OrderedDict[str, Execution] = field(default_factory=OrderedDict)
    current: Execution | None = None
    worker: asyncio.Task[None] | None = None
    egress: dict[str, Any] | None = None

    @property
    def expires_at(self) -> datetime:
        return self.last_active + timedelta(seconds=self.ttl_s)

    @property
    def workdir(self) -> Path | None:
        return self.sandbox.workdir if self.sandbox is not None else self.kept_workdir

    def view(self) -> SessionView:
        return SessionView(
            id=self.id,
            owner=self.owner,
            backend=self.backend,
            status=self.status,
            reason=self.reason,
            created_at=self.created_at,
            expires_at=self.expires_at,
            limits=self.limits,
            jail=self.sandbox.jail if self.sandbox is not None else None,
            sandbox_id=self.sandbox_id,
            ref=self.ref,
            egress=self.egress,
        )


class SessionManager:
    """Creates, finds, runs and ends sessions; starts and stops the backends. One per app
    (``app.state.sessions``). ``backends`` may be any Backend (tests pass a FakeBackend)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backends: dict[str, Backend],
        unavailable: dict[str, str] | None = None,
        egress: EgressService | None = None,
    ) -> None:
        self.settings = settings
        self.egress = egress
        self.store = store
        self.persist = Persistence(store)
        self.backends = backends
        self.unavailable = unavailable or {}
        default = self._sandbox_limits(self._resolve_limits(LimitsRequest()))
        # One gate for every backend's starts: they share the host's CPUs.
        gate = StartGate()
        self.pools = {
            name: Pool(backend, default, settings.pool_size, may_grow=self._has_room, gate=gate)
            for name, backend in backends.items()
        }
        self.sessions: dict[str, Session] = {}
        self._starting: dict[str, int] = {}  # principal -> sessions being created
        self._leases: dict[str, str] = {}  # sandbox id -> owner, for sandboxes outside sessions (tool hosts)
        self._closing: set[asyncio.Task[None]] = set()  # sandbox closes of sessions ended with background=True
        self._culler: asyncio.Task[None] | None = None
        self._started: list[str] = []  # backends started (and so to stop), in order
        self._keeps_files: dict[str, bool] = {}
        self._adopting: dict[str, asyncio.Future[Session | None]] = {}
        self.replica = f"{socket.gethostname()}:{instance_id(settings.data_dir.resolve())}"

    @property
    def log_budget(self) -> int:
        s = self.settings
        return s.max_execution_log_bytes or 2 * s.max_stream_bytes + s.max_outputs_bytes

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backends (keeping the work dirs of sessions an earlier run left live), list those sessions
        as dead, and start the idle culler. If this fails half-way, ``stop`` stops what did start."""
        # Sessions of a shared backend (kernels on a gateway) outlive any one replica: they stay live, and
        # whichever replica is asked for one next attaches to its kernel (``find``).
        # Nor are the sessions of another replica sharing the store this one's to report.
        rows = [
            row
            for row in await self.store.restorable_sessions(RESTARTED, _now())
            if not self._shared(row.backend) and row.replica in (None, self.replica)
        ]
        keep: dict[str, list[str]] = {name: [] for name in self.backends}
        for row in rows:
            if row.sandbox_id and row.backend in keep:
                keep[row.backend].append(row.sandbox_id)
        for name, backend in self.backends.items():
            reaped = await self._start_backend(name, backend, keep[name])
            self._started.append(name)
            log.info("backend %s ready (%s); removed from an earlier run: %s", name, backend.describe(), reaped)
        await self._restore(rows)
        await self.store.fail_unfinished_executions("the service restarted during this execution")
        for pool in self.pools.values():
            pool.refill()
        self._culler = asyncio.create_task(self._cull_loop())

    async def _start_backend(self, name: str, backend: Backend, keep: list[str]) -> dict[str, int]:
        self._keeps_files[name] = True
        return await backend.start(keep=keep)

    async def _restore(self, rows: list[SessionRow]) -> None:
        """The sessions an earlier run left live: listed dead until their ttl, files readable if kept."""
        now = _now()
        expiry: dict[str, datetime] = {}
        for row in rows:
            backend = self.backends.get(row.backend)
            workdir = None
            if backend is not None and row.sandbox_id and self._keeps_files.get(row.backend):
                workdir = backend.workdir_of(row.sandbox_id)
            # Newly found: kept for its ttl from now. Already reported by an earlier restart: as recorded then.
            fresh = row.status != "dead"
            expires = now + timedelta(seconds=row.ttl_s) if fresh else _aware(row.expires_at)
            expiry[row.id] = expires
            self.sessions[row.id] = Session(
                id=row.id,
                owner=row.owner,
                backend=row.backend,
                limits=SessionLimits(**row.limits),
                ttl_s=row.ttl_s,
                sandbox=None,
                sandbox_id=row.sandbox_id,
                ref=row.ref,
                restored=True,
                kept_workdir=workdir,
                created_at=_aware(row.created_at),
                last_active=expires - timedelta(seconds=row.ttl_s),
                status="dead",
                reason=RESTARTED,
            )
        if expiry:
            await self.store.mark_restored(list(expiry), RESTARTED, expiry)
            log.info("listed %d sessions of an earlier run as dead (%s)", len(expiry), RESTARTED)

    async def stop(self) -> None:
        """Stop every kernel, remove every work dir, stop the backends (graceful shutdown). Safe after a
        start that failed half-way: it stops only what started."""
        if self._culler is not None:
            self._culler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._culler
        await asyncio.gather(*(pool.close() for pool in self.pools.values()), return_exceptions=True)
        # A shared backend's kernels outlive this replica (another one serves them next): let go of them here.
        await asyncio.gather(
            *(
                self._let_go(s)
                if self._shared(s.backend) and s.sandbox is not None
                else self.end(s, "dead", "the service stopped")
                for s in list(self.sessions.values())
            ),
            return_exceptions=True,
        )
        while self._closing:  # sandboxes of sessions ended in the background (end(background=True))
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        await self.persist.close()
        for name in reversed(self._started):
            try:
                await self.backends[name].stop()
            except Exception:
                log.exception("backend %s did not stop cleanly", name)
        self._started.clear()

    # -- sessions --------------------------------------------------------------------------------------

    def _resolve_limits(self, req: LimitsRequest) -> SessionLimits:
        s = self.settings
        values = {
            "timeout_s": (req.timeout_s, s.default_timeout_s, s.max_timeout_s),
            "memory_mb": (req.memory_mb, s.default_memory_mb, s.max_memory_mb),
            "cpus": (req.cpus, s.default_cpus, s.max_cpus),
            "pids": (req.pids, s.default_pids, s.max_pids),
        }
        out: dict[str, Any] = {}
        for name, (asked, default, maximum) in values.items():
            if asked is not None and asked > maximum:
                raise Invalid(
                    "limit_too_high", f"limits.{name} is {asked}; this service allows at most {maximum}",
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
        """Sandboxes on this host: live sessions, and what the pools hold or are starting (a request waiting
        in ``acquire`` is counted there until it is handed its sandbox)."""
        live = sum(1 for s in self.sessions.values() if s.status in ("idle", "busy"))
        return live + len(self._leases) + sum(len(p) for p in self.pools.values())

    def _has_room(self) -> bool:
        return self._in_use() < self.settings.max_sessions

    async def _check_capacity(self, owner: str) -> None:
        # The host's own bound is the pools' may_grow (asked before every start); these are the caller's, and
        # count across every replica sharing the store: its live sessions are read from there, plus what only
        # this process knows (sessions being created, tool sandboxes). A pooled hand-out counts too.
        key = key_of(owner)
        recorded = dict(await self.store.live_sessions_of_key(key, _now()))
        for s in self.sessions.values():
            if s.status in ("idle", "busy") and key_of(s.owner) == key:
                recorded.setdefault(s.id, s.owner)
        live = [*recorded.values(), *(o for o in self._leases.values() if key_of(o) == key)]
        # ``_starting`` already counts this request (it is raised before the store is read, so two requests
        # of one process waiting on the store see each other).
        mine = live.count(owner) + self._starting.get(owner, 0) - 1
        if mine >= self.settings.max_sessions_per_principal:
            raise RateLimited(
                "too_many_sessions",
                f"you have {self.settings.max_sessions_per_principal} live sessions, the most allowed; "
                "delete one or wait for one to expire",
                retry_after_s=10,
            )  # fmt: skip
        of_key = len(live) + sum(n for o, n in self._starting.items() if key_of(o) == key) - 1
        if of_key >= self.settings.max_sessions_per_key:
            raise RateLimited(
                "too_many_sessions_for_key",
                f"this API key has {self.settings.max_sessions_per_key} live sessions across its users, the most "
                "allowed; retry when one ends",
                retry_after_s=10,
            )  # fmt: skip

    async def _acquire_sandbox(
        self,
        name: str,
        wanted: Limits,
        env: dict[str, str] | None,
        owner: str,
        session_id: str,
        layers: Sequence[Path] = (),
    ) -> Sandbox:
        """The one place a session gets its sandbox: the caller's quotas, then the pool (pooled or a cold
        start through the start queue). A start that would miss the kernel start timeout is refused at once."""
        self._starting[owner] = self._starting.get(owner, 0) + 1
        try:
            await self._check_capacity(owner)
            # Pooled sandboxes were made before their session existed; fresh ones carry its name.
            labels = {"executor.session": session_id, "executor.owner": owner}
            return await self.pools[name].acquire(
                wanted, env, labels, deadline_s=self.settings.kernel_start_timeout_s, layers=layers
            )
        except HostBusy as exc:
            raise RateLimited(
                "host_busy", f"this host runs its maximum of {self.settings.max_sessions} sessions; retry later",
                retry_after_s=exc.retry_after_s,
            ) from None  # fmt: skip
        except StartQueueFull as exc:
            raise RateLimited("start_queue_full", str(exc), retry_after_s=exc.retry_after_s) from None
        except SandboxError as exc:
            log.warning("sandbox start failed: %s", exc)
            raise Unavailable("sandbox_failed", f"the sandbox could not start: {exc}") from None
        finally:
            self._starting[owner] -= 1
            if not self._starting[owner]:
                del self._starting[owner]

    async def lease(
        self,
        owner: str,
        *,
        backend: str | None = None,
        purpose: str = "tool",
        layers: Sequence[Path] = (),
        egress: SandboxPolicy | None = None,
    ) -> Sandbox:
        """A sandbox outside any session (a tool host), counted against the same limits as sessions: the
        host's, the owner's and the key's; ``layers`` are read-only package dirs on its ``sys.path``; its network
        goes through the egress proxy under ``egress`` (no proxy when None). The caller closes it with
        :meth:`release`. RateLimited when full."""
        name = backend or self.settings.backend
        if name not in self.backends:
            reason = self.unavailable.get(name, "it is not one of the allowed backends")
            raise Unavailable("backend_unavailable", f"backend {name!r} is unavailable: {reason}")
        limits = self._sandbox_limits(self._resolve_limits(LimitsRequest()))
        subject = f"{purpose}-{_new_id()}"
        sandbox = await self._acquire_sandbox(name, limits, None, owner, subject, layers)
        self._leases[sandbox.id] = owner
        if egress is not None and self.egress is not None:
            try:
                await self.egress.attach(sandbox, egress, owner=owner, subject=purpose)
            except BaseException:
                await self.release(sandbox)
                raise
        return sandbox

    async def release(self, sandbox: Sandbox) -> None:
        """Close a leased sandbox (idempotent) and stop counting it."""
        try:
            if self.egress is not None:
                await self.egress.detach(sandbox.id)
            await sandbox.close()
        finally:
            self._leases.pop(sandbox.id, None)
            for pool in self.pools.values():
                pool.refill()

    async def create(self, owner: str, req: NewSession) -> Session:
        """Start a sandbox for ``owner``; RateLimited when the host or the owner is at capacity."""
        limits = self._resolve_limits(req.limits)
        ttl = req.ttl_s if req.ttl_s is not None else self.settings.default_ttl_s
        if ttl > self.settings.max_ttl_s:
            raise Invalid(
                "ttl_too_high", f"ttl_s is {ttl}; this service allows at most {self.settings.max_ttl_s}",
                field="ttl_s",
            )  # fmt: skip
        name = req.backend or self.settings.backend
        if name not in self.settings.backends or (name not in self.backends and name not in self.unavailable):
            raise Invalid(
                "backend_not_allowed",
                f"backend {name!r} is not offered here; choose one of {', '.join(self.settings.backends)}",
                field="backend",
            )  # fmt: skip
        if name in self.unavailable:
            raise Unavailable("backend_unavailable", f"backend {name!r} is unavailable: {self.unavailable[name]}")
        session_id = _new_id()
        policy = req.egress
        if policy is None and self.egress is not None:
            policy = self.egress.session_policy(None, None, admin=True)
        sandbox = await self._acquire_sandbox(name, self._sandbox_limits(limits), req.env, owner, session_id)
        egress_view: dict[str, Any] | None = None
        if policy is not None and self.egress is not None:
            try:
                await self.egress.attach(sandbox, policy, owner=owner, subject=f"session:{session_id}")
            except BaseException:
                await sandbox.close()
                raise
            egress_view = {**policy.describe(), "proxy": self.egress.available(sandbox)}
        session = Session(
            id=session_id,
            owner=owner,
            backend=name,
            limits=limits,
            ttl_s=ttl,
            sandbox=sandbox,
            sandbox_id=sandbox.id,
            ref=sandbox.ref,
            egress=egress_view,
        )
        self.sessions[session.id] = session
        session.worker = asyncio.create_task(self._work(session))
        # Awaited: after a crash, the restart finds this session's files by its sandbox id.
        await self.persist.add_session(
            SessionRow(
                id=session.id,
                owner=owner,
                backend=session.backend,
                status=session.status,
                limits=limits.as_dict(),
                ttl_s=ttl,
                created_at=session.created_at,
                expires_at=session.expires_at,
                sandbox_id=session.sandbox_id,
                ref=session.ref,
                replica=self.replica,
            )
        )
        return session

    def get(self, owner: str | None, session_id: str) -> Session:
        """The caller's live (or dead but not yet removed) session; NotFound for anything else.
        ``owner=None`` is an admin's look: any owner's session."""
        session = self.sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            raise NotFound("session_not_found", f"session {session_id!r} does not exist")
        return session

    def _shared(self, backend: str) -> bool:
        """Whether ``backend``'s sandboxes live outside this process, so other replicas may serve them."""
        return bool(getattr(self.backends.get(backend), "shared", False))

    async def find(self, owner: str | None, session_id: str) -> Session:
        """``get``, also for a session of a shared backend that another replica created or last served: its row
        in the store says whether it still lives, and its kernel is attached to here. NotFound as ``get``."""
        session = self.sessions.get(session_id)
        if session is None:
            return await self._adopt(owner, session_id)
        if self._shared(session.backend) and session.sandbox is not None and (owner is None or session.owner == owner):
            await self._follow_store(session)
        return self.get(owner, session_id)

    async def _follow_store(self, session: Session) -> None:
        """Take over what another replica recorded for a shared session: its end, or its death."""
        row = await self.store.get_session(session.id)
        if row is None:
            await self.end(session, "closed", "removed from the store")
        elif row.status == "closed" or row.status == "expired":
            await self.end(session, "closed" if row.status == "closed" else "expired", row.reason or row.status)
        elif row.status == "dead" and session.status != "dead":
            session.status = "dead"
            session.reason = row.reason

    async def _adopt(self, owner: str | None, session_id: str) -> Session:
        """A live session of a shared backend that this replica does not hold yet, attached to its kernel."""
        pending = self._adopting.get(session_id)
        if pending is None:
            pending = asyncio.ensure_future(self._attach(session_id))
            self._adopting[session_id] = pending
            pending.add_done_callback(lambda _: self._adopting.pop(session_id, None))
        session = await asyncio.shield(pending)
        if session is None or (owner is not None and session.owner != owner):
            raise NotFound("session_not_found", f"session {session_id!r} does not exist")
        return session

    async def _attach(self, session_id: str) -> Session | None:
        row = await self.store.get_session(session_id)
        if row is None or row.status not in ("idle", "busy") or not row.sandbox_id or not self._shared(row.backend):
            return None
        if _aware(row.expires_at) <= _now():
            return None
        if session_id in self.sessions:  # created or adopted meanwhile
            return self.sessions[session_id]
        try:
            sandbox: Sandbox = await self.backends[row.backend].attach(row.sandbox_id)  # type: ignore[attr-defined]
        except SandboxError as exc:
            reason = f"its kernel could not be reached: {exc}"
            log.warning("session %s: %s", session_id, reason)
            await self.persist.set_status(session_id, "dead", reason)
            raise Conflict("session_dead", f"the session is dead: {reason}; create a new one") from None
        session = Session(
            id=row.id,
            owner=row.owner,
            backend=row.backend,
            limits=SessionLimits(**row.limits),
            ttl_s=row.ttl_s,
            sandbox=sandbox,
            sandbox_id=row.sandbox_id,
            ref=row.ref,
            created_at=_aware(row.created_at),
            last_active=_aware(row.expires_at) - timedelta(seconds=row.ttl_s),
        )
        self.sessions[session.id] = session
        session.worker = asyncio.create_task(self._work(session))
        log.info("session %s (created by another replica) attached to kernel %s", session.id, row.sandbox_id)
        return session

    async def view(self, owner: str | None, session_id: str) -> SessionView:
        """A session in memory, or how an ended one ended (from the store)."""
        session = self.sessions.get(session_id)
        if session is not None and self._shared(session.backend) and session.sandbox is not None:
            await self._follow_store(session)
            session = self.sessions.get(session_id)
        if session is not None and (owner is None or session.owner == owner):
            return session.view()
        row = await self.store.get_session(session_id)
        if row is None or (owner is not None and row.owner != owner) or row.status == "closed":
            raise NotFound("session_not_found", f"session {session_id!r} does not exist")
        return _row_view(row)

    def list(self, owner: str | None) -> builtins.list[SessionView]:
        """The owner's sessions in memory (live, dead, restored); every owner's with ``owner=None`` (admins)."""
        return [s.view() for s in self.sessions.values() if owner is None or s.owner == owner]

    async def list_everywhere(self, owner: str | None) -> builtins.list[SessionView]:
        """``list``, and the live sessions of shared backends that other replicas hold (from the store)."""
        views = self.list(owner)
        shared = [name for name in self.backends if self._shared(name)]
        for row in await self.store.live_sessions_on(shared, owner, _now()):
            if row.id not in self.sessions:
                views.append(_row_view(row))
        return views

    def workdir(self, session: Session, *, write: bool = False) -> Path:
        """The session's work dir. Conflict for a session of an earlier run whose files are gone, and for
        writes to one (its files are kept to be read, until its ttl)."""
        if session.restored:
            if session.kept_workdir is None:
                raise Conflict(
                    "files_gone", "this session ended when the service restarted and its files were not kept"
                )
            if write:
                raise Conflict(
                    "session_dead",
                    "this session ended when the service restarted; its files can be read until "
                    f"{session.expires_at.isoformat()}, not changed",
                )
            return session.kept_workdir
        assert session.sandbox is not None
        if session.sandbox.workdir is None:
            # A remote kernel: its files are reached through kernel code (sandboxes.base.SandboxFiles), not yet
            # wired into the file endpoints.
            raise Conflict("files_remote", "this session's files live on the remote kernel")
        return session.sandbox.workdir

    def file_owner(self, session: Session) -> int | None:
        return session.sandbox.file_owner if session.sandbox is not None else None

    async def restart(self, owner: str, session_id: str) -> Session:
        """A fresh kernel for the session, its files kept; also how a dead session is brought back."""
        session = await self.find(owner, session_id)
        if session.sandbox is None:
            raise Conflict(
                "session_gone",
                "this session's kernel ended when the service restarted; its results and files stay readable "
                f"until {session.expires_at.isoformat()}; create a new session to run code",
            )
        if session.restarting:
            raise Conflict("session_restarting", "this session's kernel is already restarting")
        if session.status == "busy" or session.current is not None or not session.queue.empty():
            raise Conflict("session_busy", "a cell is running or queued; cancel it before restarting")
        session.restarting = True
        try:
            await session.sandbox.restart()
        except SandboxBusy as exc:
            raise Conflict("session_restarting", f"the kernel cannot restart now: {exc}") from None
        except SandboxError as exc:
            session.status = "dead"
            session.reason = f"restart failed: {exc}"
            self.persist.set_status_later(session.id, "dead", session.reason)
            raise Unavailable("sandbox_failed", f"the kernel could not restart: {exc}") from None
        finally:
            session.restarting = False
        session.status = "idle"
        session.reason = None
        session.last_active = _now()
        self.persist.set_status_later(session.id, "idle", None)
        return session

    async def delete(self, owner: str | None, session_id: str, *, background: bool = False) -> None:
        """End a session; ``owner=None`` lets an admin end anyone's. ``background``: see :meth:`end`."""
        session = await self.find(owner, session_id)
        reason = "deleted by its owner" if owner else "deleted by an admin"
        await self.end(session, "closed", reason, background=background)

    async def end(self, session: Session, status: SessionStatus, reason: str, *, background: bool = False) -> None:
        """Stop the worker, fail what is queued, kill the sandbox and remove its work dir.

        ``background``: return once the session is gone from memory (no request finds it any more) and its
        executions are finished; the sandbox's kill (waiting for its processes to end, ~25 ms locally) and the
        status write go on beside the next requests, and :meth:`stop` waits for them. For callers whose client
        never reads the session again (the Jupyter face's DELETE): a GET on the session API in those few
        milliseconds may still read it as idle from the store."""
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
        if background:
            task = asyncio.create_task(self._release_session_sandbox(session))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            await self._release_session_sandbox(session)
        pending = [running] if running else []
        while not session.queue.empty():
            pending.append(session.queue.get_nowait())
        for ex in pending:
            if not ex.finished:
                self._finish(ex, EndEvent(status="dead", reason=f"the session ended: {reason}"), "cancelled")
        if background:
            self.persist.set_status_later(session.id, status, reason)
        else:
            # Awaited: once DELETE answers, a GET must find the session closed, not live.
            await self.persist.set_status(session.id, status, reason)

    async def _release_session_sandbox(self, session: Session) -> None:
        """Close an ended session's sandbox (or remove the kept files of a restored one). Never raises."""
        if session.sandbox is not None:
            try:
                if self.egress is not None:
                    await self.egress.detach(session.sandbox.id)
                await session.sandbox.close()
            except Exception:
                log.exception("sandbox %s of session %s did not close cleanly", session.sandbox.id, session.id)
        elif session.sandbox_id and self._keeps_files.get(session.backend) and session.backend in self.backends:
            try:
                await self.backends[session.backend].discard(session.sandbox_id)
            except Exception:
                log.exception("could not remove the kept files of session %s", session.id)

    async def _let_go(self, session: Session) -> None:
        """Stop serving a shared session in this process without ending it: its kernel and its record stay for
        the other replicas; cells queued or running here end as the service stopped."""
        self.sessions.pop(session.id, None)
        running = session.current
        if session.worker is not None:
            session.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.worker
        pending = [running] if running else []
        while not session.queue.empty():
            pending.append(session.queue.get_nowait())
        for ex in pending:
            if not ex.finished:
                self._finish(ex, EndEvent(status="dead", reason="this replica of the service stopped"), "cancelled")
        detach = getattr(session.sandbox, "detach", None)  # shared backends' sandboxes have it
        try:
            if detach is not None:
                await detach()
        except Exception:
            log.warning("letting go of the kernel of session %s failed", session.id, exc_info=True)

    async def _cull_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + self.settings.reap_interval_s
        while True:
            await asyncio.sleep(self.settings.cull_interval_s)
            if loop.time() >= next_reap:
                next_reap = loop.time() + self.settings.reap_interval_s
                for backend in self.backends.values():
                    try:
                        reaped = await backend.reap()
                    except Exception:
                        log.warning("%s: reaping orphans failed", backend.name, exc_info=True)
                        continue
                    if any(reaped.values()):
                        log.warning("%s: removed sandboxes no session owned: %s", backend.name, reaped)
            for pool in self.pools.values():
                pool.refill()
            now = _now()
            for session in list(self.sessions.values()):
                if session.status != "busy" and session.queue.empty() and session.expires_at <= now:
                    if self._shared(session.backend) and not await self._idle_everywhere(session, now):
                        continue
                    if session.restored:
                        why = f"{RESTARTED}; its results and files were kept for {session.ttl_s} s"
                    else:
                        why = f"idle for more than {session.ttl_s} s"
                    log.info("culling session %s: %s", session.id, why)
                    try:
                        await self.end(session, "expired", why)
                    except Exception:
                        log.exception("culling session %s failed", session.id)

    async def _idle_everywhere(self, session: Session, now: datetime) -> bool:
        """Whether a shared session is idle on every replica: another one may have run cells in it since this
        one did (its expiry in the store is then later), or ended it (then it is only dropped here)."""
        try:
            row = await self.store.get_session(session.id)
        except Exception:
            log.warning("could not read session %s before culling it", session.id, exc_info=True)
            return False
        if row is not None and row.status in ("idle", "busy") and _aware(row.expires_at) > now:
            session.last_active = _aware(row.expires_at) - timedelta(seconds=session.ttl_s)
            return False
        return True

    # -- executions ------------------------------------------------------------------------------------

    def submit(self, session: Session, code: str, timeout_s: float | None, *, one_shot: bool = False) -> Execution:
        """Queue a cell; it runs after the ones before it."""
        if session.status == "dead":
            raise Conflict("session_dead", f"the session is dead: {session.reason}; create a new one")
        if session.restarting:
            raise Conflict("session_restarting", "the kernel is restarting; retry once the restart has answered")
        if timeout_s is not None and timeout_s > self.settings.max_timeout_s:
            raise Invalid(
                "timeout_too_high",
                f"timeout_s is {timeout_s}; this service allows at most {self.settings.max_timeout_s}",
                field="timeout_s",
            )  # fmt: skip
        if session.queue.qsize() >= _MAX_QUEUED:
            raise RateLimited(
                "queue_full", f"{_MAX_QUEUED} executions are already queued in this session", retry_after_s=5
            )
        execution_id = _new_id()
        ex = Execution(
            id=execution_id,
            session_id=session.id,
            owner=session.owner,
            code=code,
            timeout_s=timeout_s if timeout_s is not None else session.limits.timeout_s,
            builder=ResultBuilder(
                execution_id,
                session.id,
                max_stream=self.settings.max_stream_bytes,
                max_outputs=self.settings.max_outputs_bytes,
            ),
            log=ExecutionLog(self.log_budget),
            one_shot=one_shot,
        )
        self._remember(session, ex)
        self._touch(session)
        session.queue.put_nowait(ex)
        ex.publish("status", {"status": "queued"})
        return ex

    def _touch(self, session: Session) -> None:
        session.last_active = _now()
        if self._shared(session.backend):
            self.persist.touch_later(session.id, session.expires_at)

    @staticmethod
    def _remember(session: Session, ex: Execution) -> None:
        session.executions[ex.id] = ex
        while len(session.executions) > _KEEP_EXECUTIONS:
            oldest = next(iter(session.executions.values()))
            if not oldest.done.is_set():
                break
            session.executions.popitem(last=False)
        finished = [e for e in session.executions.values() if e.done.is_set()]
        for old in finished[: max(0, len(finished) - _KEEP_LOGS)]:
            old.log.compact()

    async def get_execution(self, owner: str, session_id: str, execution_id: str) -> Execution | str:
        """The Execution in memory, or the stored final result (JSON) of an older one; NotFound across owners."""
        session = self.sessions.get(session_id)
        if session is not None and session.owner == owner:
            ex = session.executions.get(execution_id)
            if ex is not None:
                return ex
        row = await self.store.get_execution(execution_id)
        if row is None or row.owner != owner or row.session_id != session_id:
            raise NotFound("execution_not_found", f"execution {execution_id!r} does not exist")
        return ExecutionResult.model_validate(row.result).model_dump_json()

    async def cancel(self, session: Session, ex: Execution) -> None:
        """Queued: it never runs. Running: interrupt, repeated for ``cancel_grace_s``; a cell still running then
        (it ignores interrupts) is killed and the session is dead, as after a timeout. Returns once the
        execution has ended (or after a bound)."""
        if not ex.finished:
            ex.cancel_requested = True
            if session.current is not ex:
                # Still queued: it ends now; the worker skips it when its turn comes.
                self._finish(ex, EndEvent(status="ok"), "cancelled")
            else:
                if ex.canceller is None:
                    ex.canceller = asyncio.create_task(self._interrupt_then_kill(session, ex))
                # Shielded: a client that hangs up does not stop the cancel it started.
                await asyncio.shield(ex.canceller)
        await _wait_done(ex, _AFTER_KILL_S)

    async def _interrupt_then_kill(self, session: Session, ex: Execution) -> None:
        sandbox = session.sandbox
        assert sandbox is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.cancel_grace_s
        ended = asyncio.ensure_future(ex.done.wait())
        try:
            # An interrupt that lands before the kernel has begun the cell is lost, so repeat it while this
            # same cell is still the one running (the next cell is only sent after this one's end is seen).
            while not ex.finished and session.current is ex:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await sandbox.interrupt()
                except SandboxError as exc:
                    log.warning("interrupting execution %s failed: %s", ex.id, exc)
                await asyncio.wait({ended}, timeout=min(_INTERRUPT_EVERY_S, remaining))
            if not ex.finished and session.current is ex:
                grace = self.settings.cancel_grace_s
                log.warning("execution %s ignored interrupts for %g s: killing its kernel", ex.id, grace)
                ex.abort = EndEvent(status="dead", reason=KILLED, kernel_alive=False)
                try:
                    await sandbox.kill(KILLED)
                except SandboxError as exc:
                    log.warning("killing the kernel of session %s failed: %s", session.id, exc)
                if ex.pump is not None:
                    ex.pump.cancel()
        finally:
            ended.cancel()

    async def _work(self, session: Session) -> None:
        while True:
            ex = await session.queue.get()
            if ex.finished:
                continue
            if ex.cancel_requested:
                self._finish(ex, EndEvent(status="ok"), "cancelled")
                continue
            if session.status == "dead" or session.sandbox is None:
                self._finish(ex, EndEvent(status="dead", reason=session.reason), "error")
                continue
            session.current = ex
            try:
                await self._run(session, session.sandbox, ex)
            except asyncio.CancelledError:
                raise
            except SandboxBusy as exc:
                self._fail(ex, "SandboxBusy", f"the kernel could not take the cell: {exc}")
            except SandboxError as exc:
                log.warning("execution %s: sandbox error: %s", ex.id, exc)
                self._fail(ex, "SandboxError", str(exc))
            except Exception as exc:  # a bug here must not take the session's worker down with it
                log.exception("execution %s failed", ex.id)
                self._finish(ex, EndEvent(status="dead", reason=f"internal error: {exc}"), "error")
            finally:
                session.current = None
                self._touch(session)
                if session.status == "busy":
                    session.status = "idle"

    def _fail(self, ex: Execution, name: str, value: str) -> None:
        ex.builder.error = ErrorInfo(name=name, value=value)
        self._finish(ex, EndEvent(status="error"), "error")

    async def _pump(self, sandbox: Sandbox, ex: Execution) -> EndEvent:
        async for event in sandbox.execute(ex.code, timeout=ex.timeout_s):
            if isinstance(event, EndEvent):
                return event
            forwarded = ex.builder.add(event)
            if forwarded is not None:
                ex.log.publish(*forwarded)
        return EndEvent(status="dead", reason="no end event from the sandbox", kernel_alive=False)

    async def _run(self, session: Session, sandbox: Sandbox, ex: Execution) -> None:
        ex.status = "running"
        ex.started_at = _now()
        session.status = "busy"
        ex.publish("status", {"status": "running"})
        workdir = sandbox.workdir
        before = await workfiles.scan_async(workdir, self.settings.max_scan_entries) if workdir is not None else None
        # Its own task, so a cancel that has to kill the kernel can end it even if the backend never does.
        pump = asyncio.create_task(self._pump(sandbox, ex))
        ex.pump = pump
        try:
            await asyncio.wait({pump})
        finally:
            ex.pump = None
            if not pump.done():
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        end = ex.abort if pump.cancelled() or ex.abort is not None else pump.result()
        if end is None:
            end = EndEvent(status="dead", reason="the execution was stopped", kernel_alive=False)
        status: ExecutionStatus
        if ex.abort is not None:
            status = "cancelled"
        elif end.status == "dead":
            status = "error"
        elif ex.cancel_requested and (end.status == "timeout" or _interrupted(ex)):
            status = "cancelled"
        else:
            status = end.status  # ok | error | timeout
        if not end.kernel_alive or not sandbox.alive:
            session.status = "dead"
            session.reason = end.reason or sandbox.exit_reason or "the kernel died"
            self.persist.set_status_later(session.id, "dead", session.reason)
        else:
            session.status = "idle"
        files: list[FileInfo] = []
        omitted, cut = 0, False
        try:
            if workdir is None or before is None:
                raise _NoHostDir
            after = await workfiles.scan_async(workdir, self.settings.max_scan_entries)
            changed, omitted = workfiles.changed_bounded(
                before, after, max_count=self.settings.max_result_files, max_bytes=self.settings.max_result_files_bytes
            )
            cut = after.incomplete or before.incomplete
            if changed:
                files, ex.files_refused = await asyncio.to_thread(
                    self._file_infos, session.id, workdir, changed, ex.one_shot
                )
        except _NoHostDir:
            pass  # a remote kernel: no host work dir to compare
        except OSError:
            log.warning("listing the changed files of execution %s failed", ex.id, exc_info=True)
        self._finish(ex, end, status, files, files_omitted=omitted, files_truncated=omitted > 0 or cut)

    def _file_infos(
        self, session_id: str, workdir: Path, entries: Iterable[workfiles.Entry], one_shot: bool
    ) -> tuple[builtins.list[FileInfo], builtins.list[workfiles.Entry]]:
        """Changed files as result entries: inline (base64) while they fit, else a download url. A one-shot
        answer has no session left to download from: every file is inline up to the one-shot cap, and the
        ones past it are returned second (the caller refuses the answer, naming them)."""
        if one_shot:
            per_file = budget = self.settings.one_shot_max_files_bytes
        else:
            per_file, budget = self.settings.inline_file_max_bytes, self.settings.max_inline_files_bytes
        out: list[FileInfo] = []
        refused: list[workfiles.Entry] = []
        for entry in entries:
            info = FileInfo(path=entry.path, size=entry.size, mime_type=entry.mime_type)
            limit = min(per_file, budget)
            if entry.size <= limit:
                try:
                    data = workfiles.read_bytes(workdir, workfiles.clean_path(entry.path), limit)
                except (OSError, ValueError):
                    data = None
                if data is not None:
                    info.data = base64.b64encode(data).decode()
                    budget -= len(data)
                elif one_shot:
                    continue  # gone or grown since the scan: nothing to return
            if info.data is None:
                if one_shot:
                    refused.append(entry)
                    continue
                info.url = f"/api/v1/sessions/{session_id}/files/{entry.path}"
            out.append(info)
        return out, refused

    def _finish(
        self,
        ex: Execution,
        end: EndEvent,
        status: ExecutionStatus,
        files: builtins.list[FileInfo] | None = None,
        *,
        files_omitted: int = 0,
        files_truncated: bool = False,
    ) -> None:
        """Make the result final, dump it once, and store it; the answer (``done``) follows the commit."""
        if ex.finished:
            return
        result = ex.builder.finish(end, status=status)
        result.files = files or []
        result.files_omitted = files_omitted
        result.files_truncated = files_truncated
        result.stray_outputs = end.stray
        result.started_at = ex.started_at
        result.finished_at = _now()
        if ex.started_at is not None:
            result.duration_ms = round((result.finished_at - ex.started_at).total_seconds() * 1000, 3)
        result.truncated = result.truncated or ex.log.truncated
        ex.result = result
        ex.result_json = result.model_dump_json()
        stored = self.persist.save_result(
            execution_id=ex.id,
            session_id=ex.session_id,
            owner=ex.owner,
            status=status,
            result_json=ex.result_json,
            created_at=ex.created_at,
        )
        stored.add_done_callback(lambda _: self._complete(ex, status))

    @staticmethod
    def _complete(ex: Execution, status: ExecutionStatus) -> None:
        assert ex.result_json is not None
        ex.status = status
        ex.log.publish("done", ex.result_json)
        ex.log.close()
        ex.done.set()

    # -- one shot -----------------------------------------------------------------------------------------

    async def run_once(
        self,
        owner: str,
        code: str,
        *,
        files: Collection[tuple[PurePosixPath, bytes]] = (),
        limits: LimitsRequest | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Fresh session, place the files, run the code, end the session; the result as JSON. Files the cell
        wrote come back inline (there is no session left to download them from) up to
        ``one_shot_max_files_bytes``; past it, TooLarge naming them."""
        session = await self.create(owner, NewSession(limits=limits or LimitsRequest(), env=env))
        try:
            workdir = self.workdir(session, write=True)
            file_owner = self.file_owner(session)
            for rel, data in files:
                await asyncio.to_thread(workfiles.write_file, workdir, rel, iter([data]), file_owner)
            ex = self.submit(session, code, timeout_s, one_shot=True)
            await ex.done.wait()
        finally:
            await self.end(session, "closed", "one-shot execution finished")
        if ex.files_refused:
            cap = self.settings.one_shot_max_files_bytes
            named = ", ".join(f"{e.path} ({e.size} bytes)" for e in ex.files_refused[:10])
            more = f" and {len(ex.files_refused) - 10} more" if len(ex.files_refused) > 10 else ""
            raise TooLarge(
                "one_shot_files_too_large",
                f"the cell wrote files that do not fit in a one-shot answer: {named}{more}; a one-shot answer "
                f"carries at most {cap} bytes of files (EXECUTOR_ONE_SHOT_MAX_FILES_BYTES). Write less, or run "
                "the code in a session and download the files",
            )
        assert ex.result_json is not None
        return ex.result_json


def _row_view(row: SessionRow) -> SessionView:
    return SessionView(
        id=row.id,
        owner=row.owner,
        backend=row.backend,
        status=row.status,  # type: ignore[arg-type]  # the store holds only SessionStatus values
        reason=row.reason,
        created_at=row.created_at,
        expires_at=row.expires_at,
        limits=SessionLimits(**row.limits),
        sandbox_id=row.sandbox_id,
        ref=row.ref,
    )


async def _wait_done(ex: Execution, timeout: float) -> None:
    """Wait until the execution is done (stored and answered), at most ``timeout`` seconds."""
    if ex.done.is_set():
        return
    waiter = asyncio.ensure_future(ex.done.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _interrupted(ex: Execution) -> bool:
    error = ex.builder.error
    return error is not None and error.name == "KeyboardInterrupt"
