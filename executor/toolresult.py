"""The result of a tool call (tool modules and tool servers alike), shaped like ExecutionResult."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ToolError(BaseModel):
    name: str
    value: str


class ToolOutput(BaseModel):
    type: Literal["image", "html", "json", "text", "file", "markdown", "svg"]
    mime_type: str
    data: str = Field(description="Text, or base64 for binary content.")
    name: str | None = None
    url: str | None = None


class ToolResult(BaseModel):
    """What a chat backend renders after a tool call."""

    status: Literal["ok", "error"]
    result: Any = Field(None, description="Parsed JSON or text returned by the tool.")
    http_status: int | None = None
    error: ToolError | None = None
    outputs: list[ToolOutput] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(
        default_factory=list, description="What a tool module sent through __event_emitter__, in order."
    )
    stdout: str = Field("", description="What a tool module printed (tool modules only).")
    stderr: str = ""
    truncated: bool = False
    started_at: datetime
    finished_at: datetime
    duration_ms: float
