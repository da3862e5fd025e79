"""Per-sandbox cgroups for memory, pids and CPU (v1 as on the dev/CI machines; v2 on the same plan).

The child joins its cgroup itself, between fork and exec, so not one instruction of the kernel runs outside
the limits. Everything lives under one parent per service instance, which makes orphans easy to find.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpu")
_CFS_PERIOD_US = 100_000


class Cgroup:
    """One sandbox's cgroup: a directory per controller (v1) or a single directory (v2)."""

    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    def join(self) -> None:
        """Move the calling process in. Safe between fork and exec: plain syscalls, no allocation games."""
        pid = str(os.getpid()).encode()
        for d in self.dirs:
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer has killed something in this cgroup."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for d in self.dirs:
            path = d / name
            if path.exists():
                with contextlib.suppress(OSError):
                    for line in path.read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
        return False

    def remove(self, wait_s: float = 2.0) -> None:
        """Kill every process left in the cgroup and remove it."""
        remove_dirs(self.dirs, wait_s)


def remove_dirs(dirs: list[Path], wait_s: float = 2.0) -> None:
    deadline = time.monotonic() + wait_s
    for d in dirs:
        while True:
            procs = []
            with contextlib.suppress(OSError):
                procs = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                # Busy until the killed processes are reaped.
                if time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s", d)
                    break
                time.sleep(0.01)


class CgroupManager:
    """Creates sandbox cgroups under ``executor-<instance>``; ``available`` is False when we may not."""

    def __init__(self, instance: str, enabled: bool = True) -> None:
        self.parent_name = f"executor-{instance}"
        self.version = 0
        self.reason = "disabled by EXECUTOR_USE_CGROUPS=false"
        if not enabled:
            return
        if os.geteuid() != 0:
            self.reason = "the service does not run as root"
            return
        # Only look here: the instance's parent dirs are made on first use and removed by close(), so a
        # manager that is built and dropped (a configuration check) leaves nothing behind.
        if (ROOT / "cgroup.controllers").exists():
            if os.access(ROOT, os.W_OK):
                self.version, self.reason = 2, "cgroup v2"
            else:
                self.reason = f"{ROOT} is not writable"
        elif all((ROOT / c).is_dir() for c in _V1_CONTROLLERS):
            if all(os.access(ROOT / c, os.W_OK) for c in _V1_CONTROLLERS):
                self.version, self.reason = 1, "cgroup v1"
            else:
                self.reason = "the cgroup v1 controllers are not writable"
        else:
            self.reason = "no memory/pids/cpu cgroup controllers mounted"

    def _ensure_parents(self) -> None:
        for parent in self._parents():
            parent.mkdir(exist_ok=True)
        if self.version == 2:
            (ROOT / self.parent_name / "cgroup.subtree_control").write_text("+memory +pids +cpu")

    @property
    def available(self) -> bool:
        return self.version > 0

    def _parents(self) -> list[Path]:
        if self.version == 1:
            return [ROOT / c / self.parent_name for c in _V1_CONTROLLERS]
        return [ROOT / self.parent_name]

    def create(self, name: str, *, memory_mb: int, pids: int, cpus: float) -> Cgroup:
        memory = str(memory_mb * 1024 * 1024)
        quota = str(max(1000, int(cpus * _CFS_PERIOD_US)))
        self._ensure_parents()
        dirs = [p / name for p in self._parents()]
        for d in dirs:
            d.mkdir()
        if self.version == 1:
            mem, pid, cpu = dirs
            (mem / "memory.limit_in_bytes").write_text(memory)
            # No swap on these hosts, but cap memory+swap too so a host that has swap behaves the same.
            memsw = mem / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(memory)
            (pid / "pids.max").write_text(str(pids))
            (cpu / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(quota)
        else:
            (d,) = dirs
            (d / "memory.max").write_text(memory)
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(pids))
            (d / "cpu.max").write_text(f"{quota} {_CFS_PERIOD_US}")
        return Cgroup(dirs, self.version)

    def close(self) -> None:
        """Remove every sandbox cgroup of this instance, then the instance's own parent dirs."""
        if not self.available:
            return
        self.reap()
        for parent in self._parents():
            with contextlib.suppress(OSError):
                parent.rmdir()

    def reap(self, keep: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Remove every sandbox cgroup of this instance not in ``keep``; returns the names removed."""
        if not self.available:
            return []
        names: set[str] = set()
        for parent in self._parents():
            with contextlib.suppress(OSError):
                names.update(p.name for p in parent.iterdir() if p.is_dir())
        names -= set(keep)
        for name in names:
            remove_dirs([p / name for p in self._parents()])
        return sorted(names)
