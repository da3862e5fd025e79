"""Files in a session's work dir, touched by the (root) service while untrusted code owns the directory.

Every path is walked one component at a time with ``O_NOFOLLOW`` from a directory fd, so a symlink planted by
the sandbox (even one swapped in mid-walk) can never make the service read or write outside the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_PATH_LEN = 1024
MAX_SCAN_ENTRIES = 5000
# A scan that stops within this many entries is cheap enough (tens of µs) to run on the event loop.
INLINE_SCAN_ENTRIES = 64


class UnsafePath(ValueError):
    """The path is absolute, climbs out with ``..``, or passes through a symlink."""


class NotAFile(ValueError):
    """The path names a directory or something that is not a regular file."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    size: int
    mtime_ns: int

    @property
    def mime_type(self) -> str:
        return mime_type(self.path)


def mime_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def clean_path(raw: str) -> PurePosixPath:
    """Validate a client-supplied relative path; raise UnsafePath saying what is wrong."""
    if not raw or raw.strip("/") == "":
        raise UnsafePath("the path is empty")
    if len(raw) > MAX_PATH_LEN or "\x00" in raw:
        raise UnsafePath("the path is too long or contains a NUL byte")
    if raw.startswith("/") or raw.startswith("\\"):
        raise UnsafePath("absolute paths are not allowed; give a path relative to the work dir")
    # Split by hand: PurePosixPath drops "." and "" segments silently, which would hide what was asked.
    parts = raw.rstrip("/").split("/")
    if any(p in ("..", ".", "") for p in parts) or "\\" in raw:
        raise UnsafePath("'..', '.', empty segments and backslashes are not allowed in paths")
    return PurePosixPath(*parts)


@contextlib.contextmanager
def _open_parent(root: Path, rel: PurePosixPath, *, create: bool = False, owner: int | None = None) -> Iterator[int]:
    """Yield an fd of ``rel``'s parent dir, reached without following any symlink."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in rel.parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if owner is not None:
                    os.fchown(nxt, owner, owner)
            except OSError as exc:
                if exc.errno in (40, 20):  # ELOOP (symlink), ENOTDIR
                    raise UnsafePath(f"{part!r} in the path is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def open_read(root: Path, rel: PurePosixPath) -> tuple[int, int]:
    """Open a regular file for reading; returns (fd, size). The caller closes the fd."""
    with _open_parent(root, rel) as parent:
        try:
            fd = os.open(rel.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
        except OSError as exc:
            if exc.errno == 40:
                raise UnsafePath("the path is a symlink") from None
            raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotAFile("the path is not a regular file")
    return fd, st.st_size


def read_bytes(root: Path, rel: PurePosixPath, limit: int) -> bytes | None:
    """The whole file if it is at most ``limit`` bytes, else None."""
    fd, size = open_read(root, rel)
    with os.fdopen(fd, "rb") as f:
        if size > limit:
            return None
        data = f.read(limit + 1)
        return data if len(data) <= limit else None


def iter_file(fd: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    with os.fdopen(fd, "rb") as f:
        while block := f.read(chunk):
            yield block


def write_file(root: Path, rel: PurePosixPath, chunks: Iterator[bytes], owner: int | None) -> int:
    """Create or replace a file (parents created), owned by the sandbox uid. Returns its size."""
    with _open_parent(root, rel, create=True, owner=owner) as parent:
        tmp = f".upload-{os.getpid()}-{rel.name}"[:200]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                if owner is not None:
                    os.fchown(f.fileno(), owner, owner)
            # rename does not follow a symlink at the destination: it replaces the link itself.
            os.rename(tmp, rel.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    return size


def delete(root: Path, rel: PurePosixPath) -> None:
    """Remove a file, a symlink (not its target) or a directory tree."""
    with _open_parent(root, rel) as parent:
        st = os.stat(rel.name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(rel.name, dir_fd=parent)
        else:
            os.unlink(rel.name, dir_fd=parent)


async def scan_async(root: Path) -> dict[str, Entry]:
    """``scan`` without blocking the event loop: small dirs inline (no thread hop), big ones in a thread."""
    found = scan(root, INLINE_SCAN_ENTRIES, max_dirs=INLINE_SCAN_ENTRIES)
    if len(found) < INLINE_SCAN_ENTRIES and not found.incomplete:
        return found
    return await asyncio.to_thread(scan, root)


class Scan(dict[str, Entry]):
    """Files by path; ``incomplete`` when a directory limit stopped the walk."""

    incomplete = False


def scan(root: Path, limit: int = MAX_SCAN_ENTRIES, max_dirs: int | None = None) -> Scan:
    """Regular files under ``root`` (symlinks not followed, at most ``limit`` files, ``max_dirs`` dirs)."""
    found = Scan()
    stack = [("", str(root))]
    dirs = 0
    while stack and len(found) < limit:
        dirs += 1
        if max_dirs is not None and dirs > max_dirs:
            found.incomplete = True
            break
        prefix, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((rel + "/", entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found[rel] = Entry(rel, st.st_size, st.st_mtime_ns)
                except OSError:
                    continue
                if len(found) >= limit:
                    break
    return found


def changed(before: dict[str, Entry], after: dict[str, Entry]) -> list[Entry]:
    """Files created or modified between two scans, in path order."""
    return [e for p, e in sorted(after.items()) if before.get(p) != e]
