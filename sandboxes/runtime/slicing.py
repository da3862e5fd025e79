"""Keeps the kernel's own output messages small: a big write goes out in slices, each flushed at once.

ipykernel buffers stream output for 0.2 s and sends it as one message; 100 writes of 1 MiB would be one
100 MiB message, over the frame cap the service enforces on what a kernel sends (and the kernel would be
stopped). Slicing keeps honest output under it; the service still caps and truncates what it keeps.

The stream *class* is patched, as an IPython extension: IPython swaps the instance ``write`` attribute around
every cell (``exec_lines`` included) and puts back what it found, so the patch must land before the first cell.
"""

from __future__ import annotations

import sys
from typing import Any

SLICE = 1 << 20


def _patch(cls: Any) -> None:
    if getattr(cls, "_executor_bounded", False):
        return
    write = cls.write

    def bounded_write(self: Any, text: Any) -> Any:
        if not isinstance(text, str):
            return write(self, text)
        pending = getattr(self, "_executor_pending", 0) + len(text)
        if pending < SLICE:
            self._executor_pending = pending
            return write(self, text)
        # Past a slice of unsent text: send what is buffered, then the rest a slice at a time.
        for start in range(0, len(text), SLICE):
            write(self, text[start : start + SLICE])
            self.flush()
        self._executor_pending = 0
        return len(text)

    cls.write = bounded_write
    cls._executor_bounded = True


def load_ipython_extension(ip: Any) -> None:
    """Loaded by ``--IPKernelApp.extensions`` (after ipykernel made its streams, before any cell)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "flush"):
            _patch(type(stream))
