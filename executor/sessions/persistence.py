"""Store writes of the session layer: finished results durable before they are answered, everything else beside
the request path.

Finished executions are group-committed: a result waits for the write in flight (if any) and goes in the next
transaction with every result that finished meanwhile, so a burst costs one transaction per round trip to the
database, and no answer is sent for a result a crash could still lose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from executor.store import RawJSON, SessionRow, Store

log = logging.getLogger(__name__)


class Persistence:
    """The session layer's writes to the store. One per SessionManager."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- finished executions: durable, batched only with each other ----------------------------------------

    def save_result(
        self,
        *,
        execution_id: str,
        session_id: str,
        owner: str,
        status: str,
        result_json: str,
        created_at: datetime,
    ) -> asyncio.Future[bool]:
        """Queue a finished execution's row; the future is True once it is committed (False if the write
        failed: logged). The write runs in its own task, so cancelling whoever waits does not lose it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        row = {
            "id": execution_id,
            "session_id": session_id,
            "owner": owner,
            "status": status,
            "result": RawJSON(result_json),
            "created_at": created_at,
        }
        self._pending.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        return future

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            ok = True
            try:
                await self.store.insert_executions([row for row, _ in batch])
            except Exception:
                ok = False
                log.exception("could not store %d execution results", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_result(ok)

    # -- sessions ---------------------------------------------------------------------------------------------

    async def add_session(self, row: SessionRow) -> None:
        """Record a new session (awaited: its sandbox id must be known to a restart after a crash)."""
        try:
            await self.store.insert_session(row)
        except Exception:
            log.exception("could not record session %s", row.id)

    async def set_status(self, session_id: str, status: str, reason: str | None) -> None:
        """Record a status change now (for changes a client may read right after)."""
        try:
            await self.store.set_session_status(session_id, status, reason)
        except Exception:
            log.exception("could not record status %s of session %s", status, session_id)

    def set_status_later(self, session_id: str, status: str, reason: str | None) -> None:
        """Record a status change beside the request path; ``close`` waits for it."""
        self.spawn(self.set_status(session_id, status, reason))

    def touch_later(self, session_id: str, expires_at: datetime) -> None:
        """Record a session's new expiry beside the request path (other replicas read it before culling)."""

        async def touch() -> None:
            try:
                await self.store.touch_session(session_id, expires_at)
            except Exception:
                log.exception("could not record the activity of session %s", session_id)

        self.spawn(touch())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a write in the background; ``close`` waits for it, so nothing is lost on shutdown."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for every write in flight."""
        while self._background or (self._writer is not None and not self._writer.done()):
            tasks: list[asyncio.Task[None]] = list(self._background)
            if self._writer is not None and not self._writer.done():
                tasks.append(self._writer)
            await asyncio.gather(*tasks, return_exceptions=True)
