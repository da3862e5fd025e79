"""The audit log: admin changes, refused requests and tool-server calls, stored and written as JSON log lines.

Entries never hold argument values, keys or tokens: who (principal id, key id), what (kind, action, target),
and how it ended (status, duration). Writes are batched off the request path; the buffer is bounded so a flood
of refused requests cannot eat memory: past ``MAX_PENDING`` waiting entries, refusals are counted instead of
kept, and the count is written as one entry. Admin changes and tool calls are always kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Float, Integer, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.principal import Principal
from executor.store import Base, Store

log = logging.getLogger("executor.audit")
Kind = Literal["admin", "refused", "tool_call", "egress"]
FLUSH_INTERVAL_S = 0.2
MAX_PENDING = 10_000


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    principal: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditEntry(BaseModel):
    id: str
    at: datetime
    kind: Kind
    principal: str | None
    key_id: str | None
    action: str
    target: str | None
    status: int | None
    duration_ms: float | None
    detail: dict[str, Any]


class AuditLog:
    """One per app. ``start`` after the tables exist, ``close`` on shutdown (flushes what is pending)."""

    def __init__(self, store: Store, *, retention_days: int) -> None:
        self.store = store
        self.retention_days = retention_days
        self._pending: list[AuditRow] = []
        self._dropped = 0
        self._flusher: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pruner = asyncio.create_task(self._prune_loop())

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()

    def record(
        self,
        kind: Kind,
        action: str,
        *,
        principal: Principal | None = None,
        target: str | None = None,
        status: int | None = None,
        duration_ms: float | None = None,
        detail: dict[str, Any] | None = None,
        key_id: str | None = None,
        principal_id: str | None = None,
    ) -> None:
        """Queue an entry (never blocks, never raises) and write its log line now."""
        if kind == "refused" and len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        row = AuditRow(
            id=uuid.uuid4().hex,
            at=datetime.now(UTC),
            kind=kind,
            principal=principal.id if principal else principal_id,
            key_id=principal.key_id if principal else (key_id or _key_of(principal_id)),
            action=action,
            target=target,
            status=status,
            duration_ms=duration_ms,
            detail=detail or {},
        )
        log.info(json.dumps(_line(row), default=str, separators=(",", ":")))
        self._pending.append(row)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        await self.flush()

    async def flush(self) -> None:
        rows, self._pending = self._pending, []
        if self._dropped:
            rows.append(
                AuditRow(
                    id=uuid.uuid4().hex, at=datetime.now(UTC), kind="refused", principal=None, key_id=None,
                    action="refusals_not_kept", target=None, status=None, duration_ms=None,
                    detail={"count": self._dropped, "reason": f"more than {MAX_PENDING} entries were waiting"},
                )
            )  # fmt: skip
            log.warning("audit: %d refused requests were counted, not kept (buffer full)", self._dropped)
            self._dropped = 0
        if not rows:
            return
        try:
            await self.store.add_all(list(rows))
        except Exception:
            log.exception("audit: could not store %d entries", len(rows))

    async def query(
        self,
        *,
        principal: str | None = None,
        kind: Kind | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first. ``principal`` matches a principal id, or a key id (all its end users)."""
        await self.flush()
        q = select(AuditRow).order_by(AuditRow.at.desc()).limit(limit)
        if principal:
            q = q.where((AuditRow.principal == principal) | (AuditRow.key_id == principal))
        if kind:
            q = q.where(AuditRow.kind == kind)
        if since:
            q = q.where(AuditRow.at >= _utc(since))
        if until:
            q = q.where(AuditRow.at < _utc(until))
        async with self.store.sessionmaker() as db:
            rows = list(await db.scalars(q))
        return [AuditEntry.model_validate(_line(r)) for r in rows]

    async def prune(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=self.retention_days)
        async with self.store.sessionmaker() as db, db.begin():
            await db.execute(delete(AuditRow).where(AuditRow.at < cutoff))

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.warning("could not prune the audit log", exc_info=True)
            await asyncio.sleep(3600)


def _line(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC),  # SQLite hands back naive UTC
        "kind": row.kind,
        "principal": row.principal,
        "key_id": row.key_id,
        "action": row.action,
        "target": row.target,
        "status": row.status,
        "duration_ms": row.duration_ms,
        "detail": row.detail,
    }


def _key_of(principal_id: str | None) -> str | None:
    # Principal ids are "<key id>" or "<key id>/<end user>" (Principal.id).
    return principal_id.split("/", 1)[0] if principal_id else None


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
