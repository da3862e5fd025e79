"""Jupyter-protocol driver on jupyter-client's async client, shared by every kernel backend.

The backend owns the kernel process (how it is jailed, how it dies); this module only speaks the protocol:
readiness, execute with a wall-time limit, iopub -> Events, interrupt over the control channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from sandboxes.base import (
    ClearEvent,
    DisplayEvent,
    EndEvent,
    ErrorEvent,
    Event,
    ResultEvent,
    SandboxError,
    StatusEvent,
    StreamEvent,
)

# How often a waiting execute re-checks that the kernel process is still alive.
_LIVENESS_POLL_S = 0.25
# How long the readiness probe waits for an iopub message before asking again.
_READY_PROBE_S = 0.05


def write_connection_files(
    host_file: Path, run_dir: Path, *, kernel_ip: str | None, owner: int | None
) -> dict[str, Any]:
    """Write the service's connection file (host paths) and ``run_dir/kernel.json`` for the kernel.

    Both name the same key and ipc endpoints; the kernel's copy uses ``kernel_ip`` (the socket prefix as seen
    inside its jail or container) when given. Returns the service's connection info.
    """
    _, info = write_connection_file(fname=str(host_file), transport="ipc", ip=str(run_dir / "k"))
    kernel_info = dict(info)
    if isinstance(kernel_info.get("key"), bytes):
        kernel_info["key"] = kernel_info["key"].decode()
    if kernel_ip is not None:
        kernel_info["ip"] = kernel_ip
    path = run_dir / "kernel.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(kernel_info, f)
    if owner is not None:
        os.chown(path, owner, owner)
    return info


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
    ]


def message_to_event(msg: dict[str, Any]) -> Event | None:
    """Translate one iopub message into an Event; None for message types a result does not carry."""
    kind = msg["msg_type"]
    content = msg["content"]
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return StreamEvent(name=name, text=content.get("text", ""))
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
    ) -> None:
        self.client = AsyncKernelClient()
        self.client.load_connection_info(connection_info)
        self._is_alive = is_alive
        self._exit_reason = exit_reason
        self.interrupt_grace_s = interrupt_grace_s

    def start_channels(self) -> None:
        # No heartbeat channel: liveness comes from the process itself, which is both cheaper and exact.
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)

    def stop_channels(self) -> None:
        if self.client.channels_running:
            self.client.stop_channels()
        self.client.context.destroy(linger=0)

    def _dead_message(self) -> str:
        return self._exit_reason() or "the kernel process ended"

    async def wait_ready(self, timeout: float) -> None:
        """Return once the kernel answers and iopub delivers.

        jupyter-client's ``wait_for_ready`` always adds an idle wait of ~0.2 s; seeing any iopub message
        (the busy/idle around our kernel_info request) proves the subscription is live, which is all we need.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self._is_alive():
                raise SandboxError(f"kernel exited while starting: {self._dead_message()}")
            if loop.time() >= deadline:
                raise SandboxError(f"kernel did not answer within {timeout:g} s")
            self.client.kernel_info()
            try:
                await self.client.get_iopub_msg(timeout=_READY_PROBE_S)
                return
            except queue.Empty:
                continue

    async def interrupt(self) -> None:
        """Send ``interrupt_request`` on the control channel.

        Message-mode interrupt reaches a kernel inside a pid namespace, where the service cannot signal it.
        """
        msg = self.client.session.msg("interrupt_request", {})
        self.client.control_channel.send(msg)

    async def execute(self, code: str, *, timeout: float, silent: bool = False) -> AsyncIterator[Event]:
        """Run ``code`` and yield its Events, ending with one EndEvent.

        On wall-time expiry the cell is interrupted; if the kernel has not gone idle ``interrupt_grace_s``
        later, the EndEvent says ``kernel_alive=False`` and the owner must kill the process.
        """
        loop = asyncio.get_running_loop()
        # silent: no execution count, no history, no Out[] (warm-up code must leave no trace).
        msg_id = self.client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False
        )
        deadline = loop.time() + timeout
        interrupted = False
        saw_error = False
        while True:
            if not self._is_alive():
                yield EndEvent(status="dead", reason=self._dead_message(), kernel_alive=False)
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                if interrupted:
                    yield EndEvent(
                        status="timeout",
                        reason=f"the cell ran past {timeout:g} s and did not stop when interrupted",
                        kernel_alive=False,
                    )
                    return
                interrupted = True
                await self.interrupt()
                deadline = loop.time() + self.interrupt_grace_s
                continue
            try:
                msg = await self.client.get_iopub_msg(timeout=min(remaining, _LIVENESS_POLL_S))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            event = message_to_event(msg)
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                saw_error = True
            yield event
            if isinstance(event, StatusEvent) and event.state == "idle":
                break
        await self._drain_reply(msg_id)
        if interrupted:
            yield EndEvent(status="timeout", reason=f"the cell ran past {timeout:g} s and was interrupted")
        else:
            yield EndEvent(status="error" if saw_error else "ok")

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
