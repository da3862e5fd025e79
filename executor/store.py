"""Persistent records: SQLAlchemy models and a small async store. SQLite by default, PostgreSQL by URL.

Live kernels are in memory; this keeps what must survive them: who owned a session, how it ended, and
every execution's final result, so a client polling after a restart still gets an answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Integer,
    String,
    Text,
    delete,
    event,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)
# aiosqlite logs every statement with its bound values at DEBUG (keys, valve secrets): never below INFO, whatever
# level the root logger is given.
logging.getLogger("aiosqlite").setLevel(logging.INFO)


class RawJSON(str):
    """JSON text already encoded (a result dumped once by pydantic): written to a JSON column as is."""


def _json_dumps(value: Any) -> str:
    # The engine's JSON serializer: pre-encoded results pass through, so a result is dumped once, not twice.
    if isinstance(value, RawJSON):
        return str(value)
    return json.dumps(value)


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
    # Which sandbox ran it, and the backend's own name for it (a container id): an operator maps a container to
    # its session with these, and a restart after a crash finds the files of the sessions that were live.
    sandbox_id: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    ref: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # The service instance (host and data dir) that created it: a replica that restarts lists only its own
    # sessions of a non-shared backend as dead, not those of the other replicas sharing this database.
    replica: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)


# Columns added after the first release: added to an existing table at start (``Store.create_all``).
_ADDED_COLUMNS = {
    "sessions": {"sandbox_id": "VARCHAR(64)", "ref": "VARCHAR(128)", "replica": "VARCHAR(200)"},
    "api_keys": {"may_create_tools": "BOOLEAN"},
}


class ExecutionRow(Base):
    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RateCountRow(Base):
    """Calls per rate-limit key and clock minute, when replicas share their rate limits (``ratelimit.py``)."""

    __tablename__ = "rate_counts"

    bucket: Mapped[str] = mapped_column(String(300), primary_key=True)
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


LIVE_STATUSES = ("starting", "idle", "busy")


class Store:
    """Async access to the database. One per app; created in the lifespan, closed on shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        # hide_parameters: bound values (keys, tokens) must never reach logs, whatever the log level.
        self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True, json_serializer=_json_dumps)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_all(self) -> None:
        """Create missing tables, and add the columns newer versions added to tables an older one made."""
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(_add_missing_columns)

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

    async def insert_session(self, row: SessionRow) -> None:
        """Insert a new session row."""
        async with self.sessionmaker() as db, db.begin():
            db.add(row)

    async def insert_executions(self, rows: list[dict[str, Any]]) -> None:
        """Insert finished executions (column values, ``result`` possibly RawJSON) in one executemany."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(ExecutionRow), rows)

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

    async def live_sessions_on(self, backends: Collection[str], owner: str | None, now: datetime) -> list[SessionRow]:
        """Sessions recorded live and not yet expired on ``backends`` (the shared ones), of ``owner`` or all."""
        if not backends:
            return []
        query = select(SessionRow).where(
            SessionRow.backend.in_(list(backends)), SessionRow.status.in_(LIVE_STATUSES), SessionRow.expires_at > now
        )
        if owner is not None:
            query = query.where(SessionRow.owner == owner)
        async with self.sessionmaker() as db:
            return list(await db.scalars(query.order_by(SessionRow.created_at)))

    async def live_sessions_of_key(self, key_id: str, now: datetime) -> list[tuple[str, str]]:
        """``(id, owner)`` of the sessions recorded live and not yet expired whose owner is the key ``key_id`` or
        one of its end users: what every replica sharing this database counts against the key's quotas."""
        async with self.sessionmaker() as db:
            rows = await db.execute(
                select(SessionRow.id, SessionRow.owner).where(
                    SessionRow.status.in_(LIVE_STATUSES),
                    SessionRow.expires_at > now,
                    or_(SessionRow.owner == key_id, SessionRow.owner.startswith(f"{key_id}/", autoescape=True)),
                )
            )
            return [(row.id, row.owner) for row in rows]

    async def touch_session(self, session_id: str, expires_at: datetime) -> None:
        """Move a live session's expiry (activity another replica must see before it culls the session)."""
        async with self.sessionmaker() as db, db.begin():
            await db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.status.in_(LIVE_STATUSES))
                .values(expires_at=expires_at)
            )

    async def count_call(self, bucket: str, window: int, delta: int = 1) -> int:
        """Add ``delta`` to the calls of ``bucket`` in minute ``window`` (one atomic upsert) and return the
        count; windows older than the previous one are dropped now and then."""
        dialect = self.engine.dialect.name
        insert_of = pg_insert if dialect == "postgresql" else sqlite_insert
        upsert = insert_of(RateCountRow).values(bucket=bucket, window=window, count=delta)
        stmt = upsert.on_conflict_do_update(
            index_elements=["bucket", "window"], set_={"count": RateCountRow.count + delta}
        ).returning(RateCountRow.count)
        async with self.engine.begin() as conn:
            count = int((await conn.execute(stmt)).scalar_one())
            if count == 1 and delta == 1:  # the first call of a window: clear the key's old ones
                await conn.execute(
                    delete(RateCountRow).where(RateCountRow.bucket == bucket, RateCountRow.window < window - 1)
                )
        return count

    async def get_execution(self, execution_id: str) -> ExecutionRow | None:
        async with self.sessionmaker() as db:
            return await db.get(ExecutionRow, execution_id)

    async def restorable_sessions(self, restarted_reason: str, now: datetime) -> list[SessionRow]:
        """Sessions an earlier run left live (its kernels died with it), and those an earlier restart already
        reported dead with ``restarted_reason`` whose time is not up: their files may still be kept."""
        async with self.sessionmaker() as db:
            rows = await db.scalars(
                select(SessionRow)
                .where(
                    or_(
                        SessionRow.status.in_(LIVE_STATUSES),
                        (SessionRow.status == "dead")
                        & (SessionRow.reason == restarted_reason)
                        & (SessionRow.expires_at > now),
                    )
                )
                .order_by(SessionRow.created_at)
            )
            return list(rows)

    async def mark_restored(self, ids: Collection[str], reason: str, expires_at: dict[str, datetime]) -> None:
        """Record sessions of an earlier run as dead with ``reason``, each kept until its ``expires_at``."""
        async with self.sessionmaker() as db, db.begin():
            for session_id in ids:
                await db.execute(
                    update(SessionRow)
                    .where(SessionRow.id == session_id)
                    .values(status="dead", reason=reason, expires_at=expires_at[session_id])
                )

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


def _add_missing_columns(conn: Connection) -> None:
    # A small forward-only migration: new nullable columns only, so any older file opens and keeps its rows.
    inspector = inspect(conn)
    for table, columns in _ADDED_COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for name, sql_type in columns.items():
            if name not in have:
                log.info("adding column %s.%s to the database", table, name)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL + NORMAL keeps a commit off the fsync path; the busy timeout covers a second service process.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
