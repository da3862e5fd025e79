"""What the tool registry and the tool dispatcher share: a stored tool, what a sandbox extracted from its file,
and the runtime protocol the registry calls into (specs, valves validation and schemas all run in sandboxes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from executor.access.grants import AccessGrant
from executor.access.principal import Principal
from executor.errors import Invalid

ValvesKind = Literal["valves", "user_valves"]


def content_hash(content: str) -> str:
    """The hash that names a tool's version: sandboxes are dedicated to (tool id, this, end user)."""
    return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class Extracted:
    """What the tool host returned after importing a file in a short-lived sandbox."""

    specs: list[dict[str, Any]]
    valves_schema: dict[str, Any] | None = None
    user_valves_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolRecord:
    """One registered tool as stored (the registry's row, as the dispatcher needs it)."""

    id: str
    user_id: str | None
    name: str
    content: str
    content_hash: str
    specs: list[dict[str, Any]]
    meta: dict[str, Any]
    access_grants: list[AccessGrant] = field(default_factory=list)
    valves: dict[str, Any] = field(default_factory=dict)  # secrets in clear: never returned as is
    valves_schema: dict[str, Any] | None = None
    user_valves_schema: dict[str, Any] | None = None
    restricted: bool = False
    requirements: list[str] = field(default_factory=list)
    created_at: int = 0
    updated_at: int = 0


class ToolLoadError(Invalid):
    """The file could not be imported (syntax error, import error, no ``Tools``, a hang, a restricted-mode
    compile error): 400 with the last lines of the traceback in ``traceback``; nothing is stored."""

    def __init__(self, message: str, traceback: list[str] | None = None, *, code: str = "tool_load_failed") -> None:
        super().__init__(code, message, field="content")
        self.traceback = traceback or []


class ValvesInvalid(Invalid):
    """Valves that do not validate against the tool's model: 400 naming the first bad field."""

    def __init__(self, kind: ValvesKind, errors: list[dict[str, Any]]) -> None:
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        loc = ".".join(str(p) for p in first.get("loc", []))
        name = f"{kind}.{loc}" if loc else kind
        super().__init__("invalid_valves", f"{name}: {first.get('msg', 'invalid')}", field=name)
        self.errors = errors


class ToolRuntime(Protocol):
    """What the registry needs from sandboxes. Implemented by ``executor.tools.dispatch.ToolHosts``."""

    async def extract(
        self,
        tool_id: str,
        content: str,
        *,
        restricted: bool,
        requirements: list[str],
        principal: Principal | None = None,
    ) -> Extracted:
        """Import ``content`` in a short-lived sandbox (its requirements installed first, progress under the
        tool id); raise ToolLoadError when it cannot be imported."""

    async def validate_valves(
        self, tool: ToolRecord, principal: Principal, kind: ValvesKind, values: dict[str, Any]
    ) -> dict[str, Any]:
        """``Model(**values).model_dump(exclude_unset=True)`` in the tool's sandbox (None values already
        dropped), secrets in clear; raise ValvesInvalid naming the field."""

    async def valves_spec(self, tool: ToolRecord, principal: Principal, kind: ValvesKind) -> dict[str, Any] | None:
        """The model's JSON schema with dynamic select options resolved for this user (in the sandbox)."""

    async def forget(self, tool_id: str) -> None:
        """Close every sandbox of this tool (it changed or was deleted)."""


class ToolCatalog(Protocol):
    """What calls need from the registry. Implemented by ``executor.tools.registry.ToolRegistry``."""

    async def usable(self, principal: Principal) -> list[ToolRecord]:
        """Every tool the principal may read (and so call), in a stable order."""

    async def every(self) -> list[ToolRecord]:
        """Every registered tool, oldest first, regardless of who asks (names must not depend on the caller)."""

    async def for_call(self, principal: Principal, tool_id: str) -> tuple[ToolRecord, dict[str, Any]]:
        """The tool and the principal's user valves (secrets in clear); NotFound without read access."""
