"""The session layer: the manager (ownership, capacity, culling), the bounded execution log, and persistence.

Importers use these names from ``executor.sessions``; the modules behind them may move.
"""

from executor.sessions.log import ExecutionLog, LogEvent
from executor.sessions.manager import (
    KILLED,
    RESTARTED,
    Execution,
    LimitsRequest,
    NewSession,
    Session,
    SessionLimits,
    SessionManager,
    SessionStatus,
    SessionView,
)
from executor.sessions.persistence import Persistence

__all__ = [
    "KILLED",
    "RESTARTED",
    "Execution",
    "ExecutionLog",
    "LimitsRequest",
    "LogEvent",
    "NewSession",
    "Persistence",
    "Session",
    "SessionLimits",
    "SessionManager",
    "SessionStatus",
    "SessionView",
]
