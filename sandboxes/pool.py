"""Warm pool: sandboxes started ahead of time, handed out once, never recycled.

Only requests for the pool's own limits and no extra environment can take a pooled sandbox (the others are
started fresh). A sandbox found dead at hand-out is discarded, not handed out. Refills run in the background and
ask ``may_grow`` first, so pooled sandboxes count against the host's limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sandboxes.base import Backend, Limits, Sandbox

log = logging.getLogger(__name__)

WARM_UP = "__import__('matplotlib.pyplot'); __import__('pandas'); __import__('numpy')"


class Pool:
    def __init__(self, backend: Backend, limits: Limits, size: int, may_grow: Callable[[], bool]) -> None:
        self.backend = backend
        self.limits = limits
        self.size = size
        self.may_grow = may_grow
        self.ready: list[Sandbox] = []
        self.starting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self.ready) + self.starting

    def fits(self, limits: Limits, env: dict[str, str] | None) -> bool:
        return self.size > 0 and not env and limits == self.limits

    def take(self) -> Sandbox | None:
        """A started, live sandbox, or None; starts a refill either way."""
        sandbox = None
        while self.ready:
            candidate = self.ready.pop(0)
            if candidate.alive:
                sandbox = candidate
                break
            self._spawn(candidate.close())
        self.refill()
        return sandbox

    def refill(self) -> None:
        while not self._closed and len(self) < self.size and self.may_grow():
            self.starting += 1
            self._spawn(self._start_one())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            sandbox = await self.backend.create(self.limits)
        except Exception as exc:
            log.warning("%s pool: a sandbox failed to start: %s", self.backend.name, exc)
            return
        finally:
            self.starting -= 1
        if not self._closed:
            # The first plot in a fresh kernel costs ~0.5 s of imports: pay it here, off the request path.
            async for _ in sandbox.execute(WARM_UP, timeout=60, silent=True):
                pass
        if self._closed or not sandbox.alive:
            await sandbox.close()
        else:
            self.ready.append(sandbox)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        sandboxes, self.ready = self.ready, []
        await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)
