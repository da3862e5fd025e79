"""What every kernel backend keeps about its sandboxes: the live ones, the work dirs kept from an earlier run,
and the teardowns still in flight (closing answers at once; ``drain`` waits for them at shutdown)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Collection, Coroutine
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sandboxes.mounts import unmount_under

log = logging.getLogger(__name__)

T = TypeVar("T")


class _HasId(Protocol):
    id: str


def remove_tree(path: Path) -> None:
    """Unmount what is mounted below ``path`` (a work dir's tmpfs), then remove it."""
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


class Registry(Generic[T]):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.live: dict[str, T] = {}
        self.kept: set[str] = set()
        self._teardowns: set[asyncio.Task[None]] = set()

    def keep(self, ids: Collection[str]) -> None:
        """Keep the work dirs of these sandboxes of an earlier run (those that still exist)."""
        self.kept = {k for k in ids if (self.root / k / "work").is_dir()}

    def workdir_of(self, sandbox_id: str) -> Path | None:
        path = self.root / sandbox_id / "work"
        return path if sandbox_id in self.kept and path.is_dir() else None

    async def discard(self, sandbox_id: str) -> None:
        if sandbox_id in self.kept:
            self.kept.discard(sandbox_id)
            await asyncio.to_thread(remove_tree, self.root / sandbox_id)

    def track(self, sandbox: _HasId, teardown: Coroutine[Any, Any, None]) -> None:
        """Run a closed sandbox's teardown beside the next requests; it leaves ``live`` when done."""

        async def run() -> None:
            try:
                await teardown
            except Exception:
                log.warning("sandbox %s: teardown failed", sandbox.id, exc_info=True)
            finally:
                self.live.pop(sandbox.id, None)

        task = asyncio.create_task(run())
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def drain(self) -> None:
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
