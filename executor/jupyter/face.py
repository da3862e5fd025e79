"""The Jupyter face's own state: per kernel, its execution counter, open websockets and Jupyter sessions.

In memory, as Jupyter Server keeps it: everything here belongs to a session of the service and goes with it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from executor.sessions import SessionManager

_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_DASHED_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def kernel_id_of(session_id: str) -> str:
    """The kernel id a session is known by on this face: its id as a dashed UUID.

    Jupyter Server routes kernels only by ids of that shape (``\\w+-\\w+-\\w+-\\w+-\\w+``): a jupyter server
    whose gateway is this service answers 404 for any other id, before asking here."""
    return str(uuid.UUID(hex=session_id)) if _HEX_ID.match(session_id) else session_id


def session_of(kernel: str) -> str:
    """The session behind a kernel id of this face (the dashed or the plain form of the session's id)."""
    lowered = kernel.lower()
    return lowered.replace("-", "") if _DASHED_ID.match(lowered) else kernel


def new_session_id() -> str:
    """A Jupyter session's id (a dashed UUID, as Jupyter Server routes them)."""
    return str(uuid.uuid4())


@dataclass
class JupyterSession:
    """A Jupyter "session": a notebook path bound to a kernel (kept in memory; it ends with its kernel)."""

    id: str
    owner: str
    kernel_id: str
    path: str
    name: str
    type: str


@dataclass
class JupyterFace:
    """The face's own state: execution counters, open websockets and Jupyter sessions, per kernel."""

    counts: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, JupyterSession] = field(default_factory=dict)

    def forget_gone(self, manager: SessionManager) -> None:
        """Drop what belongs to kernels that ended (so nothing here outlives its session)."""
        live = manager.sessions
        for sid in [s for s, js in self.sessions.items() if js.kernel_id not in live]:
            del self.sessions[sid]
        for kid in [k for k in self.counts if k not in live and not self.connections.get(k)]:
            del self.counts[kid]
