"""Work-dir scans and file operations against a sandbox that swaps paths under the service (fast, no kernels)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from executor import workfiles
from executor.workfiles import Entry


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory outside the work dir holding a secret: nothing in it may ever be listed or read."""
    d = tmp_path / "host"
    (d / "inner").mkdir(parents=True)
    (d / "secret.txt").write_text("host secret")
    (d / "inner" / "deep-secret.txt").write_text("host secret")
    return d


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "top.txt").write_text("top")
    (d / "sub" / "a.txt").write_text("a")
    (d / "sub" / "deeper" / "b.txt").write_text("b")
    return d


def _swap_for_link(work: Path, name: str, target: Path) -> None:
    """What a sandbox can do at any moment: move its dir away and plant a symlink to a host dir in its place."""
    (work / name).rename(work / f"{name}.moved")
    os.symlink(target, work / name)


def test_scan_lists_regular_files_and_skips_links(work: Path, host: Path) -> None:
    os.symlink(host, work / "linkdir")
    os.symlink(host / "secret.txt", work / "link.txt")
    os.mkfifo(work / "fifo")
    found = workfiles.scan(work)
    assert sorted(found) == ["sub/a.txt", "sub/deeper/b.txt", "top.txt"]
    assert not found.incomplete


def test_a_dir_swapped_for_a_link_after_listing_is_never_followed(
    work: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands between the parent's listing (which saw a dir) and the descent into it."""
    real_scandir = os.scandir
    calls = 0

    def scandir(path: Any = ".") -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first descent: whichever dir it is, swap the listed dirs for links to the host
            for name in ("sub",):
                if (work / name).is_dir() and not (work / name).is_symlink():
                    _swap_for_link(work, name, host)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = workfiles.scan(work)
    monkeypatch.undo()
    assert not any("secret" in p for p in found), sorted(found)


def test_a_dir_swapped_for_a_link_just_before_it_is_opened_is_never_followed(
    work: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    swapped: list[str] = []

    def hooked(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and path in ("sub", "deeper") and not swapped:
            parent = work if path == "sub" else work / "sub"
            _swap_for_link(parent, path, host)
            swapped.append(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", hooked)
    found = workfiles.scan(work)
    monkeypatch.undo()
    assert swapped == ["sub"]
    assert not any("secret" in p for p in found), sorted(found)
    assert "top.txt" in found


def test_a_file_replaced_by_a_link_is_not_listed(work: Path, host: Path) -> None:
    os.unlink(work / "top.txt")
    os.symlink(host / "secret.txt", work / "top.txt")
    found = workfiles.scan(work)
    assert "top.txt" not in found


def test_read_and_open_never_pass_through_links(work: Path, host: Path) -> None:
    _swap_for_link(work, "sub", host)
    with pytest.raises(workfiles.UnsafePath):
        workfiles.read_bytes(work, PurePosixPath("sub/secret.txt"), 1 << 20)
    with pytest.raises(workfiles.UnsafePath):
        workfiles.open_read(work, PurePosixPath("sub/secret.txt"))
    os.symlink(host / "secret.txt", work / "leak.txt")
    with pytest.raises(workfiles.UnsafePath):
        workfiles.read_bytes(work, PurePosixPath("leak.txt"), 1 << 20)


def test_write_never_passes_through_links(work: Path, host: Path) -> None:
    _swap_for_link(work, "sub", host)
    with pytest.raises(workfiles.UnsafePath):
        workfiles.write_file(work, PurePosixPath("sub/new.txt"), iter([b"x"]), None)
    assert not (host / "new.txt").exists()
    # Over a link: the link is replaced, its target untouched.
    os.symlink(host / "secret.txt", work / "leak.txt")
    assert workfiles.write_file(work, PurePosixPath("leak.txt"), iter([b"mine"]), None) == 4
    assert (host / "secret.txt").read_text() == "host secret"
    assert not (work / "leak.txt").is_symlink() and (work / "leak.txt").read_text() == "mine"


def test_upload_temp_files_are_exclusive_and_unpredictable(
    work: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sandbox code plants links at every name it could predict; the upload neither follows them nor fails."""
    for pid in {os.getpid(), 1}:
        os.symlink(host / "secret.txt", work / f".upload-{pid}-up.txt")
    real_open = os.open
    seen: list[tuple[str, int]] = []

    def hooked(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        seen.append((str(path), flags))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", hooked)
    assert workfiles.write_file(work, PurePosixPath("up.txt"), iter([b"one"]), None) == 3
    assert workfiles.write_file(work, PurePosixPath("up.txt"), iter([b"two"]), None) == 3
    monkeypatch.undo()
    assert (work / "up.txt").read_bytes() == b"two"
    assert (host / "secret.txt").read_text() == "host secret"
    temps = [(p, f) for p, f in seen if p.startswith(".")]
    assert len(temps) == 2 and temps[0][0] != temps[1][0]
    for _, flags in temps:
        assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW
    # No temp file is left behind.
    assert sorted(p.name for p in work.iterdir() if not p.is_symlink()) == ["sub", "top.txt", "up.txt"]


def test_delete_never_passes_through_links(work: Path, host: Path) -> None:
    os.symlink(host, work / "sub" / "linkdir")
    workfiles.delete(work, PurePosixPath("sub"))
    assert not (work / "sub").exists()
    assert (host / "secret.txt").exists() and (host / "inner" / "deep-secret.txt").exists()
    os.mkdir(work / "d")
    _swap_for_link(work, "d", host)
    with pytest.raises(workfiles.UnsafePath):
        workfiles.delete(work, PurePosixPath("d/secret.txt"))
    workfiles.delete(work, PurePosixPath("d"))  # removes the link itself
    assert not os.path.lexists(work / "d") and (host / "secret.txt").exists()


def test_delete_of_a_tree_swapped_mid_way_never_leaves_the_work_dir(
    work: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    swapped: list[str] = []

    def hooked(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "deeper" and dir_fd is not None and not swapped:
            _swap_for_link(work / "sub", "deeper", host)
            swapped.append(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", hooked)
    with pytest.raises(OSError):
        workfiles.delete(work, PurePosixPath("sub"))
    monkeypatch.undo()
    assert swapped
    assert (host / "secret.txt").exists() and (host / "inner" / "deep-secret.txt").exists()


def _many(root: Path, n: int, per_dir: int = 1000) -> None:
    for i in range(n):
        d = root / f"d{i // per_dir}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"f{i}").touch()


def test_a_scan_cut_by_its_limit_says_so(fast_dir: Path) -> None:
    _many(fast_dir, 2500)
    cut = workfiles.scan(fast_dir, limit=1000)
    assert cut.incomplete and len(cut) <= 1000
    full = workfiles.scan(fast_dir, limit=10_000)
    assert not full.incomplete and len(full) == 2500


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """Many files: on tmpfs when the host has one (creating 20,000 files on this disk takes seconds)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="test-workfiles-"))
        try:
            yield d
        finally:
            shutil.rmtree(d)
    else:
        yield tmp_path


def test_the_default_scan_sees_20000_files(fast_dir: Path) -> None:
    """Today's defect: 20,000 files gave 5000 entries and no sign of the rest."""
    _many(fast_dir, 20_000)
    found = workfiles.scan(fast_dir)
    assert len(found) == 20_000 and not found.incomplete


def test_a_deep_tree_is_cut_not_followed_to_the_fd_limit(tmp_path: Path) -> None:
    d = tmp_path
    for _ in range(workfiles.MAX_SCAN_DEPTH + 5):
        d = d / "d"
        d.mkdir()
    (d / "bottom.txt").touch()
    found = workfiles.scan(tmp_path)
    assert found.incomplete and "bottom.txt" not in {p.rsplit("/", 1)[-1] for p in found}


def _entries(n: int, *, mtime: Callable[[int], int] = lambda i: i) -> dict[str, Entry]:
    return {f"f{i:05d}": Entry(f"f{i:05d}", 1, mtime(i)) for i in range(n)}


def test_changed_bounded_by_count_keeps_the_newest() -> None:
    before = _entries(10)
    after = {**before, **_entries(3000, mtime=lambda i: 10_000 + i)}
    kept, omitted = workfiles.changed_bounded(before, after, max_count=1000, max_bytes=1 << 20)
    assert len(kept) == 1000 and omitted == 2000
    assert [e.path for e in kept[:2]] == ["f02999", "f02998"]
    assert all(kept[i].mtime_ns >= kept[i + 1].mtime_ns for i in range(len(kept) - 1))


def test_changed_bounded_by_bytes_of_paths() -> None:
    after = {p: Entry(p, 1, 5) for p in (f"{c * 100}" for c in "abcdefghij")}
    kept, omitted = workfiles.changed_bounded({}, after, max_count=1000, max_bytes=350)
    # Same mtime: ties broken by path, so the result never depends on dict order.
    assert [e.path[0] for e in kept] == ["a", "b", "c"] and omitted == 7


def test_changed_bounded_without_excess_omits_nothing() -> None:
    before = _entries(5)
    after = {**before, "f00001": Entry("f00001", 2, 99), "new": Entry("new", 1, 100)}
    kept, omitted = workfiles.changed_bounded(before, after, max_count=10, max_bytes=1000)
    assert [e.path for e in kept] == ["new", "f00001"] and omitted == 0


def test_scan_of_a_huge_dir_stays_bounded(fast_dir: Path) -> None:
    """A million files must not take the service's memory: the scan stops at its cap (in one dir too) and says so."""
    big = fast_dir / "big"
    big.mkdir()
    for i in range(3000):
        (big / f"{i}").touch()
    found = workfiles.scan(fast_dir, limit=500)
    assert found.incomplete and len(found) <= 500


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_scans_and_refusals_leak_no_fds(work: Path, host: Path) -> None:
    os.symlink(host, work / "l")
    before = _open_fds()
    for _ in range(3):
        workfiles.scan(work)
        with pytest.raises(workfiles.UnsafePath):
            workfiles.read_bytes(work, PurePosixPath("l/secret.txt"), 10)
    assert _open_fds() == before
