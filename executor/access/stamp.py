"""A file whose timestamp says "keys or groups changed", so every service process on this host reloads them."""

from __future__ import annotations

import os
import time
from pathlib import Path


class ChangeStamp:
    """Written by whoever changes the key or group tables (the service, the ``executor keys`` CLI); read with
    one ``stat`` per request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def touch(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        # An explicit nanosecond time: the kernel's own file times tick coarsely, and two changes in one tick
        # would look like one.
        now = time.time_ns()
        os.utime(self.path, ns=(now, now))

    def read(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None
