"""Kernel Events -> the one result shape every face of the service returns (ExecutionResult).

Caps are applied here, while events arrive, so a cell printing 100 MB costs the service at most the caps.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from sandboxes.base import ClearEvent, DisplayEvent, EndEvent, ErrorEvent, Event, ResultEvent, StreamEvent

ExecutionStatus = Literal["queued", "running", "ok", "error", "timeout", "cancelled"]
OutputType = Literal["image", "html", "json", "text", "file", "markdown", "svg"]

TRUNCATION_MARKER = "\n[output truncated]\n"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Richest first: what a chat client can show best wins when a bundle offers several.
_MIME_PREFERENCE: list[tuple[str, OutputType]] = [
    ("image/png", "image"),
    ("image/jpeg", "image"),
    ("image/gif", "image"),
    ("image/webp", "image"),
    ("image/svg+xml", "svg"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("text/latex", "markdown"),
    ("application/json", "json"),
]


class ErrorInfo(BaseModel):
    name: str
    value: str
    traceback: list[str] = Field(default_factory=list)


class Output(BaseModel):
    """A rich output. ``data`` is base64 for binary types, text for text types, a JSON value for json."""

    type: OutputType
    mime_type: str
    data: Any
    text: str | None = Field(None, description="The text/plain alternative, when the kernel sent one.")
    name: str | None = None
    url: str | None = None


class FileInfo(BaseModel):
    """A file in the work dir. Inline (``data``, base64) when small, else a download ``url``."""

    path: str
    size: int
    mime_type: str
    data: str | None = None
    url: str | None = None


class ExecutionResult(BaseModel):
    id: str
    session_id: str
    status: ExecutionStatus
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: ErrorInfo | None = None
    outputs: list[Output] = Field(default_factory=list)
    files: list[FileInfo] = Field(default_factory=list)
    files_truncated: bool = Field(
        False, description="Some changed files are not listed (too many, or the work-dir scan was cut)."
    )
    files_omitted: int = Field(0, description="How many changed files were left out of ``files`` (when known).")
    stray_outputs: int = Field(
        0,
        description="Outputs of threads that earlier cells started, seen while this cell ran and left out: they "
        "belong to those cells, which were over.",
    )
    truncated: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def bundle_to_output(data: dict[str, Any]) -> Output | None:
    """Pick the richest representation of a MIME bundle; None when it only has text/plain."""
    text = data.get("text/plain")
    text = text if isinstance(text, str) else None
    for mime, kind in _MIME_PREFERENCE:
        if mime in data:
            value = data[mime]
            if kind == "image" and isinstance(value, str):
                value = value.replace("\n", "")
            return Output(type=kind, mime_type=mime, data=value, text=text)
    for mime, value in data.items():
        if mime.endswith("+json"):
            return Output(type="json", mime_type=mime, data=value, text=text)
    return None


def _size(output: Output) -> int:
    data = output.data
    return len(data) if isinstance(data, str) else len(json.dumps(data, default=str))


class _Stream:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, text: str) -> str:
        """Keep what fits; return the part kept (what streaming clients are sent)."""
        if self.truncated:
            return ""
        room = self.cap - self.size
        if len(text) > room:
            text = text[: max(room, 0)]
            self.truncated = True
        self.parts.append(text)
        self.size += len(text)
        return text

    def value(self) -> str:
        return "".join(self.parts) + (TRUNCATION_MARKER if self.truncated else "")


class ResultBuilder:
    """Folds the Events of one execution into an ExecutionResult, within the caps."""

    def __init__(self, execution_id: str, session_id: str, *, max_stream: int, max_outputs: int) -> None:
        self.execution_id = execution_id
        self.session_id = session_id
        self.stdout = _Stream(max_stream)
        self.stderr = _Stream(max_stream)
        self.max_outputs = max_outputs
        self.outputs_size = 0
        self.outputs: list[Output] = []
        self._by_display_id: dict[str, int] = {}
        self._clear_pending = False
        self.result: str | None = None
        self.error: ErrorInfo | None = None
        self.outputs_truncated = False

    @property
    def truncated(self) -> bool:
        return self.stdout.truncated or self.stderr.truncated or self.outputs_truncated

    def add(self, event: Event) -> tuple[str, dict[str, Any]] | None:
        """Fold one event. Returns the (SSE event name, payload) to forward to live subscribers, if any."""
        if isinstance(event, StreamEvent):
            stream = self.stdout if event.name == "stdout" else self.stderr
            kept = stream.add(event.text)
            return ("stream", {"name": event.name, "text": kept}) if kept else None
        if isinstance(event, ResultEvent):
            text = event.data.get("text/plain")
            self.result = text if isinstance(text, str) else None
            output = bundle_to_output(event.data)
            if output is not None:
                self._append(output, None)
            return ("result", {"text": self.result, "output": output.model_dump() if output else None})
        if isinstance(event, DisplayEvent):
            output = bundle_to_output(event.data) or self._text_output(event.data)
            if output is None:
                return None
            if event.update:
                index = self._by_display_id.get(event.display_id or "")
                if index is None:
                    return None
                self.outputs[index] = output
                return ("output", {"index": index, "update": True, "output": output.model_dump()})
            index = self._append(output, event.display_id)
            if index is None:
                return None
            return ("output", {"index": index, "update": False, "output": output.model_dump()})
        if isinstance(event, ErrorEvent):
            self.error = ErrorInfo(
                name=event.name, value=event.value, traceback=[strip_ansi(line) for line in event.traceback]
            )
            return ("error", self.error.model_dump())
        if isinstance(event, ClearEvent):
            # As in a notebook: clear_output(wait=True) clears when the next output arrives.
            if event.wait:
                self._clear_pending = True
            else:
                self._clear()
            return ("clear", {})
        return None

    @staticmethod
    def _text_output(data: dict[str, Any]) -> Output | None:
        text = data.get("text/plain")
        if isinstance(text, str):
            return Output(type="text", mime_type="text/plain", data=text, text=text)
        return None

    def _clear(self) -> None:
        self.outputs.clear()
        self._by_display_id.clear()
        self.outputs_size = 0
        self._clear_pending = False

    def _append(self, output: Output, display_id: str | None) -> int | None:
        if self._clear_pending:
            self._clear()
        size = _size(output)
        if self.outputs_size + size > self.max_outputs:
            self.outputs_truncated = True
            return None
        self.outputs_size += size
        self.outputs.append(output)
        index = len(self.outputs) - 1
        if display_id:
            self._by_display_id[display_id] = index
        return index

    def finish(self, end: EndEvent, *, status: ExecutionStatus) -> ExecutionResult:
        """The final result. ``end`` carries why the kernel stopped when it did not finish normally."""
        error = self.error
        if end.status == "dead":
            error = ErrorInfo(name="KernelDied", value=end.reason or "the kernel died", traceback=[])
        elif end.status == "timeout" and (error is None or error.name == "KeyboardInterrupt"):
            error = ErrorInfo(name="TimeoutError", value=end.reason or "the cell timed out", traceback=[])
        return self.snapshot(status, error)

    def snapshot(self, status: ExecutionStatus, error: ErrorInfo | None = None) -> ExecutionResult:
        """What has arrived so far, as a result with ``status`` (``error`` defaults to the cell's own)."""
        return ExecutionResult(
            id=self.execution_id,
            session_id=self.session_id,
            status=status,
            stdout=self.stdout.value(),
            stderr=self.stderr.value(),
            result=self.result,
            error=error if error is not None else self.error,
            outputs=list(self.outputs),
            truncated=self.truncated,
        )
