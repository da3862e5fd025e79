"""Size-capped tmpfs work dirs on the host, shared by the backends that bind a host dir into a jail."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


def mount_tmpfs(target: Path, size_mb: int, uid: int) -> str | None:
    """Mount a size-capped tmpfs owned by ``uid`` at ``target``; returns why not, or None on success."""
    opts = f"size={size_mb}m,uid={uid},gid={uid},mode=0700".encode()
    rc = _libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts)
    if rc != 0:
        return os.strerror(ctypes.get_errno())
    return None


def unmount(target: Path) -> bool:
    """Detach the mount at ``target``; False when nothing was mounted there (or it could not be)."""
    return bool(_libc.umount2(str(target).encode(), _MNT_DETACH) == 0)


def mounts_under(root: Path) -> list[str]:
    """Mount points strictly below ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points: list[str] = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError as exc:
        log.warning("cannot read /proc/self/mountinfo: %s", exc)
        return points
    for line in text.splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_under(root: Path) -> int:
    """Detach every mount below ``root`` (work dirs of sandboxes that were not cleaned up)."""
    return sum(1 for point in mounts_under(root) if unmount(Path(point)))


class WorkDirTmpfs:
    """Size-capped tmpfs work dirs while the host lets the service mount them (root). The first refusal (say, a
    service in a container without CAP_SYS_ADMIN) turns them off for the backend, and ``describe`` says why."""

    def __init__(self, size_mb: int) -> None:
        self.size_mb = size_mb
        self.enabled = os.geteuid() == 0
        self.error = "the service does not run as root"

    def mount(self, target: Path, uid: int) -> bool:
        if not self.enabled:
            return False
        why = mount_tmpfs(target, self.size_mb, uid)
        if why is None:
            return True
        log.warning("work dir tmpfs not mounted (%s): work dir sizes are not capped", why)
        self.enabled = False
        self.error = why
        return False

    def describe(self, otherwise: str = "") -> str:
        if self.enabled:
            return f"tmpfs {self.size_mb} MiB"
        return f"host dir, total size not capped ({self.error}){otherwise}"
