"""Persistent records: SQLAlchemy models and a small async store. SQLite by default, PostgreSQL by URL.

Live kernels are in memory; this keeps what must survive them: who owned a session, how it ended, and
every execution's final result, so a client polling after a restart still gets an answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, event, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base shared by every table of the service."""


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    backend: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON)
    ttl_s: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutionRow(Base):
    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


LIVE_STATUSES = ("starting", "idle", "busy")


class Store:
    """Async access to the database. One per app; created in the lifespan, closed on shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        # hide_parameters: bound values (keys, tokens) must never reach logs, whatever the log level.
        self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_all(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def add(self, row: Base) -> None:
        async with self.sessionmaker() as db, db.begin():
            await db.merge(row)

    async def add_all(self, rows: list[Base]) -> None:
        """Insert many new rows in one transaction (one executemany, no lookups)."""
        async with self.sessionmaker() as db, db.begin():
            db.add_all(rows)

    async def set_session_status(self, session_id: str, status: str, reason: str | None = None) -> None:
        async with self.sessionmaker() as db, db.begin():
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(status=status, reason=reason))

    async def get_session(self, session_id: str) -> SessionRow | None:
        async with self.sessionmaker() as db:
            return await db.get(SessionRow, session_id)

    async def list_sessions(self, owner: str) -> list[SessionRow]:
        async with self.sessionmaker() as db:
            rows = await db.scalars(select(SessionRow).where(SessionRow.owner == owner).order_by(SessionRow.created_at))
            return list(rows)

    async def get_execution(self, execution_id: str) -> ExecutionRow | None:
        async with self.sessionmaker() as db:
            return await db.get(ExecutionRow, execution_id)

    async def end_live_sessions(self, reason: str) -> list[str]:
        """Mark every session still recorded as live as dead (its kernel cannot have survived us)."""
        async with self.sessionmaker() as db, db.begin():
            ids = list(await db.scalars(select(SessionRow.id).where(SessionRow.status.in_(LIVE_STATUSES))))
            if ids:
                await db.execute(update(SessionRow).where(SessionRow.id.in_(ids)).values(status="dead", reason=reason))
            return ids

    async def fail_unfinished_executions(self, reason: str) -> None:
        async with self.sessionmaker() as db, db.begin():
            rows = await db.scalars(select(ExecutionRow).where(ExecutionRow.status.in_(("queued", "running"))))
            for row in rows:
                result = dict(row.result)
                result["status"] = "error"
                result["error"] = {"name": "ServiceRestarted", "value": reason, "traceback": []}
                row.status = "error"
                row.result = result


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL + NORMAL keeps a commit off the fsync path; the busy timeout covers a second service process.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
