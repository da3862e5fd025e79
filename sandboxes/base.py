"""The Sandbox protocol every backend implements, and the Events a running cell yields.

Events are a typed, transport-free view of the kernel's iopub messages; the service folds them into results.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sandboxes.layers import LayerTarget


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one sandbox. Wall time per cell is enforced by the caller of ``execute``."""

    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 128
    file_size_mb: int = 256
    open_files: int = 1024


@dataclass(slots=True)
class StreamEvent:
    name: Literal["stdout", "stderr"]
    text: str
    type: Literal["stream"] = "stream"


@dataclass(slots=True)
class DisplayEvent:
    """``display_data`` or, with ``update=True``, ``update_display_data`` for ``display_id``."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    display_id: str | None = None
    update: bool = False
    type: Literal["display"] = "display"


@dataclass(slots=True)
class ResultEvent:
    """``execute_result``: the value of the cell's last expression as a MIME bundle."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    execution_count: int | None = None
    type: Literal["result"] = "result"


@dataclass(slots=True)
class ErrorEvent:
    name: str
    value: str
    traceback: list[str] = field(default_factory=list)
    type: Literal["error"] = "error"


@dataclass(slots=True)
class ClearEvent:
    wait: bool = False
    type: Literal["clear"] = "clear"


@dataclass(slots=True)
class InputRequestEvent:
    """The kernel asks its client for a line (``input()``, the stdin channel); answer with ``reply_input``.

    Only yielded by ``execute(..., allow_stdin=True)``; the cell waits until it is answered or interrupted."""

    prompt: str
    password: bool = False
    type: Literal["input_request"] = "input_request"


@dataclass(slots=True)
class StatusEvent:
    state: Literal["busy", "idle"]
    type: Literal["status"] = "status"


EndStatus = Literal["ok", "error", "timeout", "dead"]


@dataclass(slots=True)
class EndEvent:
    """Always the last event of ``execute``.

    ``timeout``: the wall time ran out and the kernel was interrupted (``kernel_alive`` says whether it
    survived); ``dead``: the kernel process ended during the cell, ``reason`` says how. ``stray``: outputs of
    threads that earlier cells started, seen during this cell and dropped (they belong to those cells).
    """

    status: EndStatus
    reason: str | None = None
    kernel_alive: bool = True
    stray: int = 0
    type: Literal["end"] = "end"


Event = StreamEvent | DisplayEvent | ResultEvent | ErrorEvent | ClearEvent | StatusEvent | InputRequestEvent | EndEvent


def instance_id(data_dir: Path) -> str:
    """Names everything one service instance creates on the host (dirs, cgroups, container labels)."""
    return hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]


class SandboxError(RuntimeError):
    """A sandbox could not be created or used; the message says why and, where it can, how to fix it."""


class SandboxBusy(SandboxError):
    """The sandbox is restarting (or already closed) and cannot take this call now; the caller may retry."""


SandboxState = Literal["starting", "idle", "busy", "restarting", "dead", "closed"]


@runtime_checkable
class Sandbox(Protocol):
    """One isolated kernel with its own work dir. Not shared between sessions, never recycled."""

    id: str
    jail: str

    @property
    def workdir(self) -> Path | None:
        """The work dir on this host; None when there is none (a remote kernel: files go through kernel code)."""

    @property
    def state(self) -> SandboxState:
        """Where the kernel is in its life: starting, idle, busy, restarting, dead, closed."""

    @property
    def ref(self) -> str | None:
        """The backend's own name for what runs the kernel (a container id), for operators; None if none."""

    @property
    def file_owner(self) -> int | None:
        """The uid that must own files the service puts in the work dir (None: leave as is)."""

    @property
    def egress_socket(self) -> Path | None:
        """The host path where the service binds this sandbox's egress proxy (``<run dir>/egress.sock``), which
        the runtime's relay reaches at 127.0.0.1:3128 inside; None when the sandbox has no net namespace of its
        own (unjailed: it has the host's network) or the backend has no such dir (fake, remote)."""

    async def start(self) -> None:
        """Start the kernel and return once it answers and its output channel is live."""

    def execute(
        self, code: str, *, timeout: float, silent: bool = False, allow_stdin: bool = False
    ) -> AsyncIterator[Event]:
        """Run ``code``; yield its Events as they arrive, ending with exactly one EndEvent.

        ``silent`` runs it without an execution count or history (warm-up code). With ``allow_stdin`` the
        kernel may ask for input: an InputRequestEvent, answered with ``reply_input``."""

    async def reply_input(self, value: str) -> None:
        """Answer the kernel's pending input request (see InputRequestEvent)."""

    async def interrupt(self) -> None:
        """Ask the running cell to stop (KeyboardInterrupt in the kernel)."""

    async def restart(self) -> None:
        """Replace the kernel with a fresh one in the same sandbox: state is lost, the work dir stays."""

    @property
    def alive(self) -> bool:
        """False once the kernel process has ended."""

    @property
    def exit_reason(self) -> str | None:
        """Why the kernel ended, once it has."""

    async def kill(self, reason: str) -> None:
        """Kill the kernel now (a cell that ignores interrupts); the sandbox is ``dead`` with ``reason``.
        Its work dir stays until ``close``."""

    async def close(self) -> None:
        """Kill the kernel and every process it started, and remove its work dir. Idempotent."""


@runtime_checkable
class Backend(Protocol):
    """Makes sandboxes of one kind. ``start`` runs once (reaping what an earlier run left), ``stop`` once.

    Optional capabilities (look them up with ``getattr``):

    - ``shared: bool``: True when its sandboxes live outside this process (a remote gateway), so any replica of
      the service may serve them; False (the default) for the local, Docker and fake backends.
    - ``async attach(sandbox_id) -> Sandbox``: a sandbox for a kernel another replica created (shared backends);
      raises SandboxError saying why when it is gone. Its sandboxes also have ``async detach()``: stop using the
      kernel in this process without ending it (a replica's graceful stop).
    """

    name: str

    def describe(self) -> dict[str, Any]:
        """What /readyz shows: the isolation really in force."""

    async def start(self, keep: Collection[str] = ()) -> dict[str, int]:
        """Prepare; remove orphans of an earlier run. Returns what was removed.

        Processes and containers of an earlier run are always killed; the work dirs of the sandbox ids in
        ``keep`` stay (readable at ``workdir_of(id)``) until ``discard(id)``: the files of sessions that were
        live when the service died."""

    def workdir_of(self, sandbox_id: str) -> Path | None:
        """The kept work dir of a sandbox of an earlier run, or None."""

    async def discard(self, sandbox_id: str) -> None:
        """Remove a kept work dir. Idempotent."""

    async def reap(self) -> dict[str, int]:
        """Remove what no live sandbox owns (periodically)."""

    async def create(
        self,
        limits: Limits,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        *,
        layers: Sequence[Path] = (),
    ) -> Sandbox:
        """A new, started sandbox. ``labels`` name its owner where the backend can show them (containers).
        ``layers`` are package dirs (``sandboxes/layers.py``) mounted read-only and put on the kernel's
        ``sys.path`` in this order, after the runtime and before the interpreter's own packages.
        Raises SandboxError saying why it could not start."""

    async def layer_target(self) -> LayerTarget:
        """The interpreter this backend's kernels run, which the packages in ``layers`` must be built for."""

    async def stop(self) -> None:
        """Remove every sandbox of this backend."""


@dataclass(frozen=True, slots=True)
class FileStat:
    """One regular file of a sandbox's work dir, by relative path."""

    path: str
    size: int
    mtime_ns: int


@runtime_checkable
class SandboxFiles(Protocol):
    """Optional capability of a sandbox with no host work dir (``workdir is None``): its files through kernel
    code. Paths are relative to the work dir and already validated by the caller; the sandbox still refuses
    absolute paths, ``..`` and paths that leave the work dir through a symlink (PermissionError).
    Missing: FileNotFoundError; a directory where a file is wanted: IsADirectoryError."""

    async def list_files(self, max_entries: int) -> tuple[list[FileStat], bool]:
        """Regular files (symlinks not followed) and whether the listing was cut at ``max_entries`` names."""

    async def read_file(self, path: str, limit: int) -> bytes | None:
        """The file's bytes, or None when it is larger than ``limit``."""

    async def write_file(self, path: str, data: bytes) -> int:
        """Create or replace the file (parents made); returns the bytes written."""

    async def delete_file(self, path: str) -> None:
        """Remove a file or a directory tree."""
