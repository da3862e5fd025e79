"""Files in a session's work dir, touched by the (root) service while untrusted code owns the directory.

Every path is walked one component at a time with ``O_NOFOLLOW`` from a directory fd, so a symlink planted by
the sandbox (even one swapped in mid-walk) can never make the service read or write outside the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mimetypes
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# O_NONBLOCK: never wait on a fifo swapped in under a name (O_DIRECTORY refuses it anyway).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_NOFOLLOW on a link fails with ELOOP; O_DIRECTORY on a non-directory with ENOTDIR.
_NOT_A_DIR = (errno.ELOOP, errno.ENOTDIR)
MAX_PATH_LEN = 1024
# Names seen (files, dirs, anything) before a scan stops: a work dir of a million files costs the service at
# most this many entries (~30 MB at 300 B each) per scan, and the scan says it was cut.
MAX_SCAN_ENTRIES = 100_000
# Directory fds a walk holds at once (one per level): a deeper tree is cut rather than run into the fd limit.
MAX_SCAN_DEPTH = 64
# A delete holds one fd per level too; deeper trees (which no API path can name) are removed from code.
MAX_DELETE_DEPTH = 256
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


def _open_dir(name: str, dir_fd: int) -> int:
    """Open a subdirectory by name, relative to ``dir_fd``; a symlink or non-directory raises UnsafePath."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NOT_A_DIR:
            raise UnsafePath(f"{name!r} in the path is a symlink or not a directory") from None
        raise


@contextlib.contextmanager
def _open_parent(root: Path, rel: PurePosixPath, *, create: bool = False, owner: int | None = None) -> Iterator[int]:
    """Yield an fd of ``rel``'s parent dir, reached one component at a time without following any symlink."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in rel.parts[:-1]:
            try:
                nxt = _open_dir(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by the sandbox: opened below
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = _open_dir(part, fd)
                if owner is not None:
                    os.fchown(nxt, owner, owner)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def open_read(root: Path, rel: PurePosixPath) -> tuple[int, int]:
    """Open a regular file for reading; returns (fd, size). The caller closes the fd."""
    with _open_parent(root, rel) as parent:
        try:
            # O_NONBLOCK: a fifo planted under the name must not hang the service; it is refused below.
            fd = os.open(rel.name, _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath("the path is a symlink") from None
            raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile("the path is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
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
    """The blocks of an open file, closing it at the end."""
    with os.fdopen(fd, "rb") as f:
        while block := f.read(chunk):
            yield block


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_temp(parent: int) -> tuple[int, str]:
    # Random and O_EXCL: sandbox code shares the dir and could otherwise pre-plant a link, a fifo or its own file
    # under a name it can guess.
    for _ in range(8):
        name = f".upload-{secrets.token_hex(12)}"
        try:
            return os.open(name, _TEMP_FLAGS, 0o600, dir_fd=parent), name
        except FileExistsError:
            continue
    raise FileExistsError("no free temporary name for the upload")


def write_file(root: Path, rel: PurePosixPath, chunks: Iterable[bytes], owner: int | None) -> int:
    """Create or replace a file (parents created), owned by the sandbox uid. Returns its size."""
    with _open_parent(root, rel, create=True, owner=owner) as parent:
        fd, tmp = _create_temp(parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                if owner is not None:
                    os.fchown(f.fileno(), owner, owner)
                os.fchmod(f.fileno(), 0o644)
            # rename does not follow a symlink at the destination: it replaces the link itself.
            os.rename(tmp, rel.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    return size


def _rmtree_at(parent: int, name: str, depth: int = 0) -> None:
    """Remove ``name`` under ``parent``: entries are unlinked by name, dirs entered only through O_NOFOLLOW fds."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in _NOT_A_DIR:
            raise
        os.unlink(name, dir_fd=parent)  # a file or a link (never its target)
        return
    try:
        if depth >= MAX_DELETE_DEPTH:
            raise UnsafePath(f"the tree is more than {MAX_DELETE_DEPTH} levels deep; delete it from code")
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        for child in names:
            _rmtree_at(fd, child, depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def delete(root: Path, rel: PurePosixPath) -> None:
    """Remove a file, a symlink (not its target) or a directory tree."""
    with _open_parent(root, rel) as parent:
        os.stat(rel.name, dir_fd=parent, follow_symlinks=False)  # FileNotFoundError for a missing name
        _rmtree_at(parent, rel.name)


class Scan(dict[str, Entry]):
    """Files by path; ``incomplete`` when a limit (entries, depth, dirs) stopped the walk before its end."""

    incomplete = False


async def scan_async(root: Path, limit: int = MAX_SCAN_ENTRIES) -> Scan:
    """``scan`` without blocking the event loop: small dirs inline (no thread hop), big ones in a thread."""
    found = scan(root, INLINE_SCAN_ENTRIES, max_dirs=INLINE_SCAN_ENTRIES)
    if not found.incomplete:
        return found
    return await asyncio.to_thread(scan, root, limit)


def _entries(it: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
    # A dir removed or made unreadable mid-listing ends its listing, not the whole scan.
    with contextlib.suppress(OSError):
        yield from it


def scan(root: Path, limit: int = MAX_SCAN_ENTRIES, max_dirs: int | None = None) -> Scan:
    """Regular files under ``root``: symlinks never followed, at most ``limit`` names seen, ``max_dirs`` dirs.

    The walk holds a dir fd per level and opens every subdirectory by name relative to its parent's fd with
    ``O_NOFOLLOW | O_DIRECTORY``: a dir the sandbox swaps for a link after it was listed fails to open (and is
    skipped) instead of leading the root service into a host directory. Files are stat'ed relative to the same
    fd without following links, so a file swapped for a link is skipped too.
    """
    found = Scan()
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        return found
    seen = 0
    dirs = 0
    # (path prefix, dir fd, names of its subdirs still to enter)
    stack: list[tuple[str, int, list[str]]] = []

    def enter(prefix: str, fd: int) -> bool:
        """List one dir; False once a limit is reached."""
        nonlocal seen, dirs
        dirs += 1
        subdirs: list[str] = []
        stack.append((prefix, fd, subdirs))
        if max_dirs is not None and dirs > max_dirs:
            return False
        try:
            it = os.scandir(fd)
        except OSError:
            return True
        with it:
            for entry in _entries(it):
                seen += 1
                if seen > limit:
                    return False
                rel = prefix + entry.name
                if len(rel) > MAX_PATH_LEN:
                    found.incomplete = True  # cannot be named through the API either
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            found[rel] = Entry(rel, st.st_size, st.st_mtime_ns)
                except OSError:
                    continue
        subdirs.reverse()  # popped from the end: walk in listing order
        return True

    try:
        going = enter("", top)
        while going and stack:
            prefix, fd, subdirs = stack[-1]
            if not subdirs:
                stack.pop()
                os.close(fd)
                continue
            name = subdirs.pop()
            if len(stack) >= MAX_SCAN_DEPTH:
                found.incomplete = True
                continue
            try:
                sub = _open_dir(name, fd)
            except (UnsafePath, OSError):
                continue  # swapped for a link or removed since it was listed
            going = enter(f"{prefix}{name}/", sub)
        if not going:
            found.incomplete = True
    finally:
        for _, fd, _ in stack:
            os.close(fd)
    return found


def changed(before: Mapping[str, Entry], after: Mapping[str, Entry]) -> list[Entry]:
    """Files created or modified between two scans, in path order."""
    return [e for p, e in sorted(after.items()) if before.get(p) != e]


def changed_bounded(
    before: Mapping[str, Entry], after: Mapping[str, Entry], *, max_count: int, max_bytes: int
) -> tuple[list[Entry], int]:
    """Files created or modified between two scans, newest first (ties by path), and how many were left out.

    At most ``max_count`` entries whose paths total at most ``max_bytes`` (UTF-8) are kept: the newest, which are
    what the cell most likely just wrote. The kept ones are exactly a prefix of the full newest-first list.
    """
    fresh = [e for p, e in after.items() if before.get(p) != e]
    fresh.sort(key=lambda e: (-e.mtime_ns, e.path))
    kept: list[Entry] = []
    used = 0
    for entry in fresh:
        cost = len(entry.path.encode("utf-8", "surrogateescape"))
        if len(kept) >= max_count or used + cost > max_bytes:
            break
        kept.append(entry)
        used += cost
    return kept, len(fresh) - len(kept)
