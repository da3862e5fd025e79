"""The kernel layer every kernel backend shares: a Jupyter-protocol driver and ``KernelSandbox``.

``KernelDriver`` speaks the protocol on jupyter-client's async client: readiness, execute with a wall-time limit,
iopub -> Events, interrupt over the control channel. ``KernelSandbox`` owns one kernel's life (state machine,
connection files, launch, restart, kill on death, exit reason) on top of a ``Provisioner``, which only runs the
kernel process (a bwrap jail, a container, a remote kernel), in the spirit of jupyter_client's provisioners.

Everything a kernel sends is untrusted: code in the sandbox holds the kernel's key and can write to its sockets.
One ZMQ frame is capped at the receiving socket (``MAXMSGSIZE``); a larger one ends the cell and the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo, write_connection_file
from zmq.utils.monitor import parse_monitor_message

from sandboxes.base import (
    ClearEvent,
    DisplayEvent,
    EndEvent,
    ErrorEvent,
    Event,
    InputRequestEvent,
    Limits,
    ResultEvent,
    SandboxBusy,
    SandboxError,
    SandboxState,
    StatusEvent,
    StreamEvent,
)
from sandboxes.egress import SOCKET_NAME
from sandboxes.mounts import WorkDirTmpfs
from sandboxes.runtime import SECCOMP_FAILED_EXIT

log = logging.getLogger(__name__)

# How often a waiting execute re-checks that the kernel process is still alive.
_LIVENESS_POLL_S = 0.25
# How long the readiness probe waits for an iopub message before asking again.
_READY_PROBE_S = 0.05
# Message ids of earlier cells remembered per kernel, to count (and drop) what their threads still print.
_PAST_CELLS = 64
DEFAULT_MAX_MESSAGE_BYTES = 32 << 20
# How often an interrupted cell that has not stopped is interrupted again, until the grace ends.
_REINTERRUPT_S = 0.5


def exit_status_reason(code: int) -> str:
    """Why a kernel that exited with ``code`` (not a signal) ended, in words."""
    if code == SECCOMP_FAILED_EXIT:
        return (
            f"the kernel exited with status {code}: the sandbox runtime refused to run code because its seccomp "
            "filter is not in force"
        )
    return f"the kernel exited with status {code}"


def kernel_context(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> zmq.asyncio.Context:
    """One ZMQ context (one I/O thread) for every kernel of a backend; each new socket gets the frame cap."""
    ctx = zmq.asyncio.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return ctx


def write_connection_files(
    host_file: Path, run_dir: Path, *, kernel_ip: str | None, owner: int | None
) -> dict[str, Any]:
    """Write the service's connection file (host paths) and ``run_dir/kernel.json`` for the kernel.

    Both name the same key and ipc endpoints; the kernel's copy uses ``kernel_ip`` (the socket prefix as seen
    inside its jail or container) when given. Returns the service's connection info.
    """
    _, info = write_connection_file(fname=str(host_file), transport="ipc", ip=str(run_dir / "k"))
    kernel_info: dict[str, Any] = dict(info)
    key = kernel_info.get("key")
    if isinstance(key, bytes):
        kernel_info["key"] = key.decode()
    if kernel_ip is not None:
        kernel_info["ip"] = kernel_ip
    path = run_dir / "kernel.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(kernel_info, f)
    if owner is not None:
        os.chown(path, owner, owner)
    return dict(info)


def kernel_command(python: str, connection_file: str, runtime_package: str) -> list[str]:
    """The ipykernel command line every backend runs."""
    return [
        python,
        "-m",
        "ipykernel_launcher",
        "-f",
        connection_file,
        # In a pid namespace the parent is pid 1: without this ipykernel believes it was orphaned.
        "--IPKernelApp.parent_handle=0",
        "--HistoryManager.enabled=False",
        "--IPKernelApp.quiet=True",
        f"--IPKernelApp.exec_lines=['__import__(\"{runtime_package}\").setup()']",
        f"--IPKernelApp.extensions=['{runtime_package}.slicing']",
    ]


_OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"})


def message_to_event(msg: dict[str, Any]) -> Event | None:
    """Translate one iopub message into an Event; None for message types a result does not carry."""
    kind = msg["msg_type"]
    content = msg["content"]
    if kind == "stream":
        return StreamEvent(name="stderr" if content.get("name") == "stderr" else "stdout", text=content.get("text", ""))
    if kind in ("display_data", "update_display_data"):
        transient = content.get("transient") or {}
        return DisplayEvent(
            data=content.get("data", {}),
            metadata=content.get("metadata", {}),
            display_id=transient.get("display_id"),
            update=kind == "update_display_data",
        )
    if kind == "execute_result":
        return ResultEvent(
            data=content.get("data", {}),
            metadata=content.get("metadata", {}),
            execution_count=content.get("execution_count"),
        )
    if kind == "error":
        return ErrorEvent(
            name=content.get("ename", "Error"),
            value=content.get("evalue", ""),
            traceback=list(content.get("traceback", [])),
        )
    if kind == "clear_output":
        return ClearEvent(wait=bool(content.get("wait")))
    if kind == "status":
        state = content.get("execution_state")
        if state in ("busy", "idle"):
            return StatusEvent(state=state)
    return None


class KernelDriver:
    """Talks to one running kernel.

    ``is_alive`` and ``exit_reason`` come from the backend that owns the process, so a kernel that dies
    mid-cell ends the cell at once instead of waiting for the wall-time limit.
    """

    def __init__(
        self,
        connection_info: dict[str, Any],
        *,
        is_alive: Callable[[], bool],
        exit_reason: Callable[[], str | None],
        interrupt_grace_s: float = 5.0,
        context: zmq.asyncio.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._own_context = context is None
        self.client = AsyncKernelClient(context=context or kernel_context(max_message_bytes))
        self.client.load_connection_info(cast(KernelConnectionInfo, connection_info))
        self._is_alive = is_alive
        self._exit_reason = exit_reason
        self.interrupt_grace_s = interrupt_grace_s
        self.max_message_bytes = max_message_bytes
        self._monitor: zmq.asyncio.Socket | None = None
        self._past: deque[str] = deque(maxlen=_PAST_CELLS)
        self.oversized = False

    def start_channels(self) -> None:
        # No heartbeat channel: liveness comes from the process itself, which is both cheaper and exact.
        self.client.start_channels(shell=True, iopub=True, stdin=True, hb=False, control=True)
        # A frame over MAXMSGSIZE makes libzmq drop the connection (and reconnect): the only sign is this event.
        self._monitor = self.client.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def stop_channels(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.client.iopub_channel.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self.client.channels_running:
            self.client.stop_channels()
        if self._own_context:
            self.client.context.destroy(linger=0)

    async def _oversized(self) -> bool:
        return await self._disconnected() and await self._still_alive_after_disconnect()

    def _oversized_end(self, stray: int) -> list[Event]:
        limit = self.max_message_bytes >> 20
        return [
            ErrorEvent(
                name="OutputLimitExceeded",
                value=f"the kernel sent a message part larger than {limit} MiB; the kernel was stopped",
            ),
            EndEvent(
                status="dead",
                reason=f"the kernel sent a message part larger than {limit} MiB",
                kernel_alive=False,
                stray=stray,
            ),
        ]

    async def _still_alive_after_disconnect(self) -> bool:
        """A dying kernel drops its connection too: only one that lives on sent something too large."""
        for _ in range(20):
            if not self._is_alive():
                self.oversized = False
                return False
            await asyncio.sleep(0.05)
        return True

    async def _disconnected(self) -> bool:
        """True once the kernel's iopub connection was dropped (a frame over the cap)."""
        if self._monitor is None:
            return False
        while await self._monitor.poll(timeout=0):
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.oversized = True
        return self.oversized

    def _dead_message(self) -> str:
        return self._exit_reason() or "the kernel process ended"

    async def wait_ready(self, timeout: float) -> None:
        """Return once the kernel has run its start-up code (the runtime's hardening) and iopub delivers.

        ipykernel answers ``kernel_info`` only after ``exec_lines``, so the reply proves the filter is in force
        (a kernel whose hardening failed exits instead, and is never handed out); seeing any iopub message
        proves the subscription is live. jupyter-client's ``wait_for_ready`` adds an idle wait we skip.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent: set[str] = set()
        iopub_live = False
        while True:
            if not self._is_alive():
                raise SandboxError(f"kernel exited while starting: {self._dead_message()}")
            if loop.time() >= deadline:
                raise SandboxError(f"kernel did not answer within {timeout:g} s")
            if not iopub_live:
                sent.add(self.client.kernel_info())
                try:
                    await self.client.get_iopub_msg(timeout=_READY_PROBE_S)
                    iopub_live = True
                except queue.Empty:
                    continue
            try:
                reply = await self.client.get_shell_msg(timeout=_READY_PROBE_S)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") in sent:
                return

    async def interrupt(self) -> None:
        """Send ``interrupt_request`` on the control channel.

        Message-mode interrupt reaches a kernel inside a pid namespace, where the service cannot signal it.
        """
        msg = self.client.session.msg("interrupt_request", {})
        self.client.control_channel.send(msg)

    async def reply_input(self, value: str) -> None:
        """Answer the kernel's pending ``input_request`` on the stdin channel."""
        self.client.input(value)

    async def _next(self, timeout: float, stdin: zmq.asyncio.Poller | None) -> dict[str, Any]:
        """The next iopub message, or with ``stdin`` whichever of iopub and stdin has one first."""
        if stdin is None:
            return await self.client.get_iopub_msg(timeout=timeout)
        ready = dict(await stdin.poll(int(timeout * 1000)))
        if self.client.stdin_channel.socket in ready:
            return await self.client.get_stdin_msg(timeout=0)
        if self.client.iopub_channel.socket in ready:
            return await self.client.get_iopub_msg(timeout=0)
        raise queue.Empty

    async def execute(
        self, code: str, *, timeout: float, silent: bool = False, allow_stdin: bool = False
    ) -> AsyncIterator[Event]:
        """Run ``code`` and yield its Events, ending with one EndEvent.

        On wall-time expiry the cell is interrupted; if the kernel has not gone idle ``interrupt_grace_s``
        later, the EndEvent says ``kernel_alive=False`` and the owner must kill the process. With
        ``allow_stdin`` the kernel's input requests are yielded as InputRequestEvents (answer: ``reply_input``).
        """
        loop = asyncio.get_running_loop()
        # silent: no execution count, no history, no Out[] (warm-up code must leave no trace).
        msg_id = self.client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=allow_stdin, stop_on_error=False
        )
        poller: zmq.asyncio.Poller | None = None
        if allow_stdin:
            poller = zmq.asyncio.Poller()
            poller.register(self.client.iopub_channel.socket, zmq.POLLIN)
            poller.register(self.client.stdin_channel.socket, zmq.POLLIN)
        deadline = loop.time() + timeout
        interrupted = False
        next_interrupt = 0.0
        saw_error = False
        stray = 0
        check_link = True
        past = set(self._past)
        self._past.append(msg_id)
        while True:
            if not self._is_alive():
                yield EndEvent(status="dead", reason=self._dead_message(), kernel_alive=False, stray=stray)
                return
            # The link is looked at when iopub goes quiet and at the end, not per message (the hot path).
            if check_link and await self._oversized():
                for last in self._oversized_end(stray):
                    yield last
                return
            check_link = False
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
                deadline = loop.time() + self.interrupt_grace_s
                next_interrupt = loop.time() + _REINTERRUPT_S
                continue
            if interrupted and loop.time() >= next_interrupt:
                # A kernel that has just started can lose the first interrupt (ipykernel ignores SIGINT until
                # its handlers are in place): ask again while the grace lasts.
                await self.interrupt()
                next_interrupt = loop.time() + _REINTERRUPT_S
            try:
                msg = await self._next(min(remaining, _LIVENESS_POLL_S), poller)
            except queue.Empty:
                check_link = True
                continue
            parent = msg["parent_header"].get("msg_id")
            if msg["msg_type"] == "input_request":
                if parent == msg_id:
                    content = msg["content"]
                    yield InputRequestEvent(
                        prompt=str(content.get("prompt", "")), password=bool(content.get("password", False))
                    )
                continue
            if parent != msg_id:
                # Output of a thread an earlier cell started, routed to that cell by the runtime: not ours.
                if parent in past and msg["msg_type"] in _OUTPUT_TYPES:
                    stray += 1
                continue
            event = message_to_event(msg)
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                saw_error = True
            if isinstance(event, StatusEvent) and event.state == "idle":
                if await self._oversized():
                    for last in self._oversized_end(stray):
                        yield last
                    return
                yield event
                break
            yield event
        await self._drain_reply(msg_id)
        if interrupted:
            yield EndEvent(status="timeout", reason=f"the cell ran past {timeout:g} s and was interrupted", stray=stray)
        else:
            yield EndEvent(status="error" if saw_error else "ok", stray=stray)

    async def _drain_reply(self, msg_id: str) -> None:
        # The reply is sent before idle, on another socket; read it so the shell queue never grows.
        # Replies to readiness probes are skipped on the way.
        for _ in range(64):
            try:
                reply = await self.client.get_shell_msg(timeout=1.0)
            except queue.Empty:
                return
            if reply["parent_header"].get("msg_id") == msg_id:
                return


@dataclass(frozen=True, slots=True)
class KernelPaths:
    """Where one sandbox's files are: ``dir`` is private to the service (connection file, etc files);
    ``rundir`` holds the ipc sockets and the kernel's connection file; ``workdir`` is the user's files."""

    dir: Path
    rundir: Path
    workdir: Path

    def create(self, tmpfs: WorkDirTmpfs, *, tmpfs_uid: int, owner: int | None) -> bool:
        """Make the three dirs (0700), the work dir a tmpfs where the host allows; ``owner`` gets the work and
        socket dirs. Returns whether the tmpfs was mounted (``unmount`` it at the end)."""
        for d in (self.dir, self.workdir, self.rundir):
            d.mkdir(mode=0o700)
        mounted = tmpfs.mount(self.workdir, tmpfs_uid)
        if owner is not None:
            for d in (self.workdir, self.rundir):
                os.chown(d, owner, owner)
        return mounted


class Provisioner(Protocol):
    """Runs one kernel process and nothing else: no Jupyter protocol here.

    ``KernelSandbox`` calls ``prepare`` once, then ``launch`` / ``kill`` / ``cleanup(restart=True)`` for each
    kernel, then ``kill`` and ``cleanup(restart=False)`` once at the end. A new backend (a remote kernel) needs
    only a new provisioner.
    """

    paths: KernelPaths
    jail: str

    @property
    def kernel_ip(self) -> str | None:
        """The ipc socket prefix as the kernel sees it (inside its jail), or None for the host path."""

    @property
    def file_owner(self) -> int | None:
        """The uid that must own the kernel's connection file and the files put in the work dir."""

    @property
    def ref(self) -> str | None:
        """The backend's name for the running process (a container id), for operators."""

    async def prepare(self) -> None:
        """Create what lives as long as the sandbox: dirs, the work dir's tmpfs, a uid."""

    async def launch(self) -> None:
        """Start the kernel process; ``rundir/kernel.json`` is already written."""

    def poll(self) -> int | None:
        """The exit status once the process has ended, else None. Cheap and non-blocking."""

    async def settle(self) -> None:
        """After the kernel's sockets went quiet: wait briefly for the process's end to be known."""

    def exit_reason(self) -> str | None:
        """Why the process ended (out of memory, a signal, a status), once it has. Non-blocking."""

    def diagnostics(self) -> str:
        """What the process said before it died (a stderr tail), for start-up errors."""

    async def kill(self) -> None:
        """Kill the kernel and everything it started, and wait until it is gone."""

    async def cleanup(self, *, restart: bool) -> None:
        """Release what one launch held (cgroup, container); with ``restart=False`` also the dirs."""


class KernelSandbox:
    """One kernel with its work dir, on any provisioner. Implements the Sandbox protocol.

    States: ``starting -> idle <-> busy``, ``idle -> restarting -> idle``, any -> ``dead`` (the process ended or
    was killed), any -> ``closed``. A lock serialises start, restart and close, so two restarts never race on
    the connection file or the cgroup; execute or restart while restarting raises SandboxBusy.
    """

    def __init__(
        self,
        sandbox_id: str,
        limits: Limits,
        provisioner: Provisioner,
        *,
        start_timeout_s: float,
        context: zmq.asyncio.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_closed: Callable[[KernelSandbox, Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        self.id = sandbox_id
        self.limits = limits
        self.provisioner = provisioner
        self.jail = provisioner.jail
        self.workdir = provisioner.paths.workdir
        self.start_timeout_s = start_timeout_s
        self._context = context
        self._max_message_bytes = max_message_bytes
        self._on_closed = on_closed
        self.driver: KernelDriver | None = None
        self._state: SandboxState = "starting"
        self._reason: str | None = None
        self._lock = asyncio.Lock()

    # -- what the service reads ---------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        if self._state in ("idle", "busy") and self.provisioner.poll() is not None:
            return "dead"
        return self._state

    @property
    def alive(self) -> bool:
        return self._state in ("starting", "idle", "busy") and self.provisioner.poll() is None

    @property
    def exit_reason(self) -> str | None:
        if self._reason is not None:
            return self._reason
        if self._state == "closed":
            return "the sandbox was closed"
        if self.provisioner.poll() is None:
            return None
        return self.provisioner.exit_reason()

    @property
    def ref(self) -> str | None:
        return self.provisioner.ref

    @property
    def file_owner(self) -> int | None:
        return self.provisioner.file_owner

    @property
    def egress_socket(self) -> Path | None:
        # Every provisioner but the unjailed one gives the kernel its own net namespace and the run dir.
        if self.jail == "none":
            return None
        return self.provisioner.paths.rundir / SOCKET_NAME

    # -- life -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._state != "starting":
                raise SandboxError(f"the sandbox is {self._state}, not starting")
            await self.provisioner.prepare()
            await self._launch()
            self._state = "idle"

    async def _launch(self) -> None:
        p = self.provisioner
        info = write_connection_files(
            p.paths.dir / "connection.json", p.paths.rundir, kernel_ip=p.kernel_ip, owner=p.file_owner
        )
        await p.launch()
        self.driver = KernelDriver(
            info,
            is_alive=lambda: self.provisioner.poll() is None,
            exit_reason=lambda: self.provisioner.exit_reason(),
            context=self._context,
            max_message_bytes=self._max_message_bytes,
        )
        self.driver.start_channels()
        try:
            await self.driver.wait_ready(self.start_timeout_s)
        except SandboxError as exc:
            await asyncio.sleep(0.05)  # let the process's last words arrive
            tail = p.diagnostics()
            raise SandboxError(f"{exc}{': ' + tail if tail else ''}") from None

    async def restart(self) -> None:
        """A fresh kernel in the same sandbox: state is gone, the work dir stays. Also revives a dead one."""
        if self._state == "closed":
            raise SandboxError("the sandbox is closed")
        if self._lock.locked() or self._state == "restarting":
            raise SandboxBusy("the kernel is already starting or restarting")
        async with self._lock:
            if self._state == "busy":
                raise SandboxBusy("a cell is running; interrupt it first")
            self._state = "restarting"
            try:
                self._stop_driver()
                await self.provisioner.kill()
                await self.provisioner.cleanup(restart=True)
                with contextlib.suppress(FileNotFoundError):
                    (self.provisioner.paths.rundir / "kernel.json").unlink()
                self._reason = None
                await self._launch()
            except BaseException as exc:
                if self._state == "restarting":
                    self._state = "dead"
                    self._reason = f"restart failed: {exc}"
                try:
                    await self.provisioner.kill()
                except Exception:
                    log.warning("sandbox %s: kill after a failed restart failed", self.id, exc_info=True)
                raise
            if self._state == "restarting":
                self._state = "idle"

    async def execute(
        self, code: str, *, timeout: float, silent: bool = False, allow_stdin: bool = False
    ) -> AsyncIterator[Event]:
        """Run a cell: the Events, ending with one EndEvent. Raises SandboxBusy while restarting or busy."""
        if self._state in ("starting", "restarting", "busy"):
            raise SandboxBusy(f"the kernel is {self._state}")
        if self.driver is None or not self.alive:
            reason = self.exit_reason or "the kernel is not running"
            yield EndEvent(status="dead", reason=reason, kernel_alive=False)
            return
        self._state = "busy"
        try:
            async for event in self.driver.execute(code, timeout=timeout, silent=silent, allow_stdin=allow_stdin):
                if isinstance(event, EndEvent):
                    event = await self._on_end(event)
                    # Before the last yield: a caller that stops iterating at the end never resumes us.
                    if self._state == "busy":
                        self._state = "idle" if self.alive else "dead"
                yield event
        finally:
            if self._state == "busy":
                self._state = "idle" if self.alive else "dead"

    async def _on_end(self, end: EndEvent) -> EndEvent:
        if not end.kernel_alive and self.provisioner.poll() is None:
            # It would not stop (a timeout past the interrupt grace, an oversized message): kill it.
            await self.provisioner.kill()
            self._reason = self._reason or end.reason
        if end.status == "dead":
            await self.provisioner.settle()
            reason = self._reason or self.provisioner.exit_reason() or end.reason
            self._state = "dead"
            return EndEvent(status="dead", reason=reason, kernel_alive=False, stray=end.stray)
        if not end.kernel_alive:
            self._state = "dead"
        return end

    async def reply_input(self, value: str) -> None:
        """Answer the kernel's pending input request (ignored unless a cell is running)."""
        if self.driver is not None and self._state == "busy":
            await self.driver.reply_input(value)

    async def interrupt(self) -> None:
        if self.driver is not None and self.alive:
            await self.driver.interrupt()

    async def kill(self, reason: str) -> None:
        """Kill the kernel now; the sandbox is dead with ``reason`` until restarted or closed."""
        if self._state == "closed":
            return
        self._reason = reason
        self._state = "dead"
        await self.provisioner.kill()

    async def close(self) -> None:
        """Kill the kernel; release the rest in the background when the backend tracks teardowns. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._stop_driver()
        async with self._lock:
            try:
                await self.provisioner.kill()
            except Exception:
                log.warning("sandbox %s: kill at close failed", self.id, exc_info=True)
            teardown = self.provisioner.cleanup(restart=False)
            if self._on_closed is not None:
                self._on_closed(self, teardown)
            else:
                await teardown

    def _stop_driver(self) -> None:
        if self.driver is not None:
            self.driver.stop_channels()
            self.driver = None
