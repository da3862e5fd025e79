"""The Jupyter face's own state: per kernel, its execution counter, open websockets and Jupyter sessions.

In memory, as Jupyter Server keeps it: everything here belongs to a session of the service and goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from executor.sessions import SessionManager


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
