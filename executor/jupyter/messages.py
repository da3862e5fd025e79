"""Jupyter messages (the classic JSON websocket protocol of Jupyter Server) built from an execution's events.

A Jupyter Server relays kernel messages to a websocket as JSON text: ``header``, ``parent_header``, ``metadata``,
``content``, ``buffers``, ``channel``, and, copied from the header by jupyter_client's ``Session.deserialize``,
top-level ``msg_id`` and ``msg_type`` (Open WebUI dispatches on the top-level ``msg_type``). Every message answering
a request carries that request's header as ``parent_header``, which is how clients pick their replies.
"""

from __future__ import annotations

import json
import platform
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from executor.sessions import LogEvent

PROTOCOL_VERSION = "5.3"
KERNEL_NAME = "python3"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def message(
    channel: str, msg_type: str, content: dict[str, Any], parent: dict[str, Any], session: str
) -> dict[str, Any]:
    """One message as a Jupyter Server sends it on the websocket."""
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": "executor",
        "session": session,
        "date": _now(),
        "version": PROTOCOL_VERSION,
    }
    return {
        "header": header,
        "msg_id": msg_id,
        "msg_type": msg_type,
        "parent_header": parent,
        "metadata": {},
        "content": content,
        "buffers": [],
        "channel": channel,
    }


def kernel_info() -> dict[str, Any]:
    """The content of a ``kernel_info_reply``."""
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "executor",
        "implementation_version": "0.1.0",
        "language_info": {
            "name": "python",
            "version": platform.python_version(),
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": "Python in a sandbox of the executor service",
        "help_links": [],
    }


def _bundle(output: dict[str, Any] | None, text: str | None) -> dict[str, Any]:
    # The service keeps the richest representation and its text/plain alternative: the bundle a client reads.
    bundle: dict[str, Any] = {}
    if output is not None:
        bundle[output["mime_type"]] = output["data"]
        if isinstance(output.get("text"), str):
            bundle.setdefault("text/plain", output["text"])
    if text is not None:
        bundle.setdefault("text/plain", text)
    return bundle


@dataclass
class CellReplies:
    """Turns the events of one execution into the Jupyter messages answering its ``execute_request``."""

    parent: dict[str, Any]
    session: str
    code: str
    execution_count: int
    busy_sent: bool = False
    truncation_said: bool = False
    error_sent: str | None = None  # the ename of the error message already sent
    finished: bool = False
    _out: list[dict[str, Any]] = field(default_factory=list)

    def _iopub(self, msg_type: str, content: dict[str, Any]) -> None:
        self._out.append(message("iopub", msg_type, content, self.parent, self.session))

    def _busy(self) -> None:
        if not self.busy_sent:
            self.busy_sent = True
            self._iopub("status", {"execution_state": "busy"})
            self._iopub("execute_input", {"code": self.code, "execution_count": self.execution_count})

    def _say_truncated(self, why: str) -> None:
        if not self.truncation_said:
            self.truncation_said = True
            self._iopub("stream", {"name": "stderr", "text": f"\n[{why}]\n"})

    def on_event(self, event: LogEvent) -> list[dict[str, Any]]:
        """The messages one event of the execution log becomes (none for some)."""
        self._out = []
        payload = event.payload if isinstance(event.payload, dict) else {}
        name = event.name
        if name == "status":
            if payload.get("status") == "running":
                self._busy()
        elif name == "stream":
            self._busy()
            self._iopub("stream", {"name": payload.get("name", "stdout"), "text": payload.get("text", "")})
        elif name == "result":
            self._busy()
            bundle = _bundle(payload.get("output"), payload.get("text"))
            content = {"execution_count": self.execution_count, "data": bundle, "metadata": {}}
            self._iopub("execute_result", content)
        elif name == "output":
            self._busy()
            kind = "update_display_data" if payload.get("update") else "display_data"
            # The service names outputs by their place in the cell's result (an update names the one it
            # replaces): that place, scoped by the request, is the display_id a client matches updates with.
            display_id = f"{self.parent.get('msg_id', '')}-{payload.get('index')}"
            transient = {"display_id": display_id}
            content = {"data": _bundle(payload.get("output"), None), "metadata": {}, "transient": transient}
            self._iopub(kind, content)
        elif name == "error":
            self._busy()
            self.error_sent = str(payload.get("name", ""))
            content = {
                "ename": payload.get("name", ""),
                "evalue": payload.get("value", ""),
                "traceback": list(payload.get("traceback") or []),
            }
            self._iopub("error", content)
        elif name == "clear":
            self._iopub("clear_output", {"wait": False})
        elif name == "truncated":
            self._say_truncated(str(payload.get("reason", "output truncated")))
        elif name == "dropped":
            self._say_truncated("this connection fell behind the cell's output; some of it was not sent")
        elif name == "done":
            return self.finish(event.data())
        return self._out

    def finish(self, result_json: str) -> list[dict[str, Any]]:
        """The closing messages from the final result: an error the kernel did not report itself (a timeout,
        a dead kernel), a truncation notice, then ``execute_reply`` (shell) and ``status: idle`` (iopub)."""
        if self.finished:
            return []
        self.finished = True
        self._out = []
        self._busy()
        result = json.loads(result_json)
        error = result.get("error") or None
        status = result.get("status")
        if result.get("truncated"):
            self._say_truncated("output truncated: the cell's output passed this service's limits")
        if error and error.get("name") != self.error_sent:
            content = {"ename": error["name"], "evalue": error.get("value", ""), "traceback": error.get("traceback")}
            if not content["traceback"]:
                content["traceback"] = [f"{error['name']}: {error.get('value', '')}"]
            self._iopub("error", content)
        reply: dict[str, Any] = {"status": "ok", "execution_count": self.execution_count}
        if status == "cancelled" and not error:
            reply = {"status": "aborted", "execution_count": self.execution_count}
        elif error:
            reply = {
                "status": "error",
                "execution_count": self.execution_count,
                "ename": error["name"],
                "evalue": error.get("value", ""),
                "traceback": error.get("traceback") or [],
            }
        else:
            reply["user_expressions"] = {}
            reply["payload"] = []
        self._out.append(message("shell", "execute_reply", reply, self.parent, self.session))
        self._iopub("status", {"execution_state": "idle"})
        return self._out
