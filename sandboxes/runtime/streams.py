"""The kernel's stdout/stderr as user code expects them (runs inside the kernel; standard library only).

- ``sys.stdout.buffer`` / ``sys.stderr.buffer``: ipykernel's streams are text-only, so binary writes raised
  AttributeError. They now decode as UTF-8 with replacement characters, as bytes written to fd 1/2 already do.
- Output of a thread goes to the cell that started it. ipykernel tags each write with the parent header of the
  calling thread, falling back to the *current* cell for threads that never set one, so a thread started by
  cell 1 printed into cell 2's result. Each thread now carries the header of the cell that started it (and a
  thread-pool task that of the cell that submitted it); once that cell is over, the service drops the output,
  since its parent is not the running cell.
"""

from __future__ import annotations

import codecs
import functools
import io
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")


class BinaryStream(io.BufferedIOBase):
    """A write-only binary face of a text stream: bytes are decoded (UTF-8, replacement characters) and written.

    The decoder is incremental, so a character split across two writes arrives whole; ``flush`` ends a
    sequence left incomplete (as one replacement character) so nothing waits past the cell.
    """

    def __init__(self, text: Any) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        if isinstance(data, str):
            raise TypeError("a bytes-like object is required, not 'str'")
        raw = memoryview(data).cast("B")
        with self._lock:
            text = self._decoder.decode(raw.tobytes())
        if text:
            self._text.write(text)
        return raw.nbytes

    def flush(self) -> None:
        if self.closed:
            return
        with self._lock:
            text = self._decoder.decode(b"", final=True)
        if text:
            self._text.write(text)
        self._text.flush()

    def fileno(self) -> int:
        return int(self._text.fileno())

    def isatty(self) -> bool:
        return bool(self._text.isatty())

    @property
    def encoding(self) -> str:
        return "utf-8"


def add_binary_buffers() -> None:
    """Give ``sys.stdout`` and ``sys.stderr`` a ``buffer`` when they lack one (ipykernel's OutStream does)."""
    stream: Any
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not hasattr(stream, "buffer"):
            try:
                stream.buffer = BinaryStream(stream)
            except (AttributeError, TypeError):
                continue


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or not hasattr(shell, "set_thread_parent") or not hasattr(shell, "get_parent"):
        return None
    return shell


def current_parent(shell: Any) -> dict[str, Any] | None:
    """The parent header output from this thread would carry now; None outside any cell."""
    try:
        parent = shell.get_parent()
    except Exception:
        return None
    return dict(parent) if isinstance(parent, dict) and parent.get("msg_id") else None


def with_parent(shell: Any, parent: dict[str, Any], fn: Callable[..., _T]) -> Callable[..., _T]:
    """``fn`` wrapped so that what it prints or displays, in whatever thread it runs, goes to ``parent``."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> _T:
        tokens = shell.set_thread_parent(parent)
        try:
            return fn(*args, **kwargs)
        finally:
            shell.reset_thread_parent(tokens)

    return run


_installed = False


def route_thread_output() -> None:
    """Make every thread started from now on (and every thread-pool task) write to the cell that started it."""
    global _installed
    shell = _shell()
    if shell is None or _installed:
        return
    _installed = True
    original_start = threading.Thread.start
    original_submit = ThreadPoolExecutor.submit
    try:
        from ipykernel.thread import BaseThread
    except ImportError:  # an ipykernel without it: no kernel threads to tell apart
        kernel_threads: tuple[type, ...] = ()
    else:
        kernel_threads = (BaseThread,)

    def start(self: threading.Thread) -> None:
        # ipykernel's own threads (control, shell channel, subshells) set a parent per message they handle.
        parent = None if isinstance(self, kernel_threads) else current_parent(shell)
        if parent is not None:
            # An instance attribute, so a subclass's own run() is wrapped too; Thread._bootstrap calls self.run().
            self.run = with_parent(shell, parent, self.run)  # type: ignore[method-assign]
        original_start(self)

    def submit(self: ThreadPoolExecutor, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        # Pool workers outlive the cell that started them: each task carries the cell that submitted it.
        parent = current_parent(shell)
        if parent is not None:
            fn = with_parent(shell, parent, fn)
        return original_submit(self, fn, *args, **kwargs)

    threading.Thread.start = start  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign,assignment]
