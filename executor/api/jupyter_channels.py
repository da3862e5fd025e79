"""One kernel websocket of the Jupyter face: client requests in, replies and iopub messages out.

``execute_request`` (shell) is submitted to the session manager and relayed as its events arrive, one relay task
per cell; ``kernel_info_request``, ``comm_info_request``, ``interrupt_request`` and ``shutdown_request`` are
answered; other requests get an error reply; ``stdin`` is not offered. Every message sent is first made to fit
``EXECUTOR_JUPYTER_MAX_MESSAGE_BYTES`` (executor.jupyter.fit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from fastapi import WebSocket

from executor.errors import DomainError
from executor.jupyter import fit
from executor.jupyter.face import JupyterFace
from executor.jupyter.messages import CellReplies, kernel_info, message
from executor.sessions import Execution, Session, SessionManager

log = logging.getLogger(__name__)

# Work a connection started that must finish even if it closes first (a cancel, a restart): held here till done.
_DETACHED: set[asyncio.Task[Any]] = set()


def _detach(work: Any) -> None:
    task: asyncio.Task[Any] = asyncio.ensure_future(work)
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)


class Channels:
    """One websocket: requests in, replies and iopub messages out (one relay task per cell)."""

    def __init__(self, ws: WebSocket, manager: SessionManager, session: Session, face: JupyterFace) -> None:
        self.ws = ws
        self.manager = manager
        self.session = session
        self.face = face
        self.limit = manager.settings.jupyter_max_message_bytes
        self.kernel_session = uuid.uuid4().hex  # the "session" of the messages this side sends
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                frame = await self.ws.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                text = frame.get("text")
                if not isinstance(text, str):
                    continue  # binary frames are the v1 protocol, which this face does not offer
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if isinstance(msg, dict) and not await self.dispatch(msg):
                    await self.ws.close()
                    return
        finally:
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, msg: dict[str, Any]) -> None:
        """Send a message, made to fit the limit first (stream text split, other outputs shrunk or cut)."""
        text = fit.encode(msg)
        # Encoded once; a text of at most limit/4 characters is under the limit in UTF-8 whatever it holds.
        texts = [text]
        if len(text) > self.limit // 4 and len(text.encode()) > self.limit:
            if msg.get("msg_type") == "stream":
                texts = [fit.encode(part) for part in fit.split_stream(msg, self.limit)]
            else:
                texts = [fit.encode(await asyncio.to_thread(fit.fit, msg, self.limit))]
        async with self.lock:
            for part in texts:
                await self.ws.send_text(part)

    def _reply(self, parent: dict[str, Any], channel: str, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return message(channel, msg_type, content, parent, self.kernel_session)

    async def dispatch(self, msg: dict[str, Any]) -> bool:
        """Answer one client message; False when the connection is to end (the kernel was shut down)."""
        header = msg.get("header") if isinstance(msg.get("header"), dict) else {}
        assert isinstance(header, dict)
        msg_type = str(header.get("msg_type") or msg.get("msg_type") or "")
        channel = str(msg.get("channel") or "shell")
        content = msg.get("content") if isinstance(msg.get("content"), dict) else {}
        assert isinstance(content, dict)
        if channel == "stdin":
            log.debug("kernel %s: stdin message %s ignored (stdin is not offered)", self.session.id, msg_type)
            return True
        if msg_type == "execute_request":
            await self.execute(header, content)
        elif msg_type == "kernel_info_request":
            await self._answer(header, channel, "kernel_info_reply", kernel_info())
        elif msg_type == "comm_info_request":
            await self._answer(header, channel, "comm_info_reply", {"status": "ok", "comms": {}})
        elif msg_type == "interrupt_request":
            current = self.session.current
            if current is not None:
                _detach(self.manager.cancel(self.session, current))
            await self.send(self._reply(header, channel, "interrupt_reply", {"status": "ok"}))
        elif msg_type == "shutdown_request":
            restart = bool(content.get("restart"))
            await self.send(self._reply(header, channel, "shutdown_reply", {"status": "ok", "restart": restart}))
            if restart:
                _detach(self._restart())
            else:
                await self.manager.end(self.session, "closed", "shut down by its Jupyter client")
                return False
        elif msg_type.endswith("_request"):
            error = {"status": "error", "ename": "NotImplementedError", "traceback": [],
                     "evalue": f"{msg_type} is not offered by this service"}  # fmt: skip
            await self.send(self._reply(header, channel, msg_type.replace("_request", "_reply"), error))
        return True

    async def _answer(self, parent: dict[str, Any], channel: str, msg_type: str, content: dict[str, Any]) -> None:
        # As a kernel does: busy, the reply, idle, all answering the request.
        await self.send(self._reply(parent, "iopub", "status", {"execution_state": "busy"}))
        await self.send(self._reply(parent, channel, msg_type, content))
        await self.send(self._reply(parent, "iopub", "status", {"execution_state": "idle"}))

    async def _restart(self) -> None:
        try:
            await self.manager.restart(self.session.owner, self.session.id)
            self.face.counts.pop(self.session.id, None)
        except DomainError as exc:
            log.info("kernel %s: restart asked over the websocket failed: %s", self.session.id, exc.message)

    def _spawn(self, work: Any) -> None:
        """A relay of this connection: cancelled when it closes."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def execute(self, header: dict[str, Any], content: dict[str, Any]) -> None:
        code = content.get("code")
        count = self.face.counts.get(self.session.id, 0) + 1
        self.face.counts[self.session.id] = count
        replies = CellReplies(parent=header, session=self.kernel_session, code=str(code), execution_count=count)
        refusal: tuple[str, str] | None = None
        if not isinstance(code, str):
            refusal = ("KernelError", "execute_request without code")
        elif self.session.id not in self.manager.sessions:
            refusal = ("KernelError", "the kernel has ended")
        else:
            try:
                ex = self.manager.submit(self.session, code, None)
            except DomainError as exc:  # dead, restarting, queue full: the client gets an answer, not a hang-up
                refusal = (type(exc).__name__, exc.message)
        if refusal is not None:
            error = {"name": refusal[0], "value": refusal[1], "traceback": []}
            for m in replies.finish(json.dumps({"status": "error", "error": error})):
                await self.send(m)
            return
        self._spawn(self._relay(ex, replies))

    async def _relay(self, ex: Execution, replies: CellReplies) -> None:
        """Send the cell's messages as its events arrive; then its reply and ``idle``."""
        try:
            async for event in ex.log.subscribe(-1):
                if event is not None:
                    for m in replies.on_event(event):
                        await self.send(m)
            if not replies.finished:
                await ex.done.wait()
                assert ex.result_json is not None
                for m in replies.finish(ex.result_json):
                    await self.send(m)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-cell: the cell itself goes on until DELETE
            log.debug("kernel %s: relay of execution %s ended: %r", self.session.id, ex.id, exc)
