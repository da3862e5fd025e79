"""Package layers for tools' ``requirements``: built once per requirement set on the host, cached by hash, read-only.

A layer is a ``pip install --target`` directory at ``<cache_dir>/tool-layers/<layer id>``; backends bind it
read-only into a kernel and put it on ``sys.path`` (``sandboxes/layers.py``). The build is the only step with network,
and it runs on the host, never in a sandbox; sandboxes stay offline.

pip never runs code from a package here: ``--only-binary=:all:`` refuses sdists (whose setup.py would run on the
host), dependencies still resolve from wheels, and installing a wheel only unpacks files. pip runs ``--isolated``
(no ``PIP_*`` variables or config files of the host), with an environment of a few allow-listed variables, in an empty
directory, in its own process group, off the event loop, bounded in time (killed on timeout) and output. The layer
is written to a temporary dir and renamed into place only when complete, its files made read-only first, so a
failed, cut-short or oversized build leaves nothing behind and is never taken for a finished one.

For the Docker backend the target interpreter is the image's (``--python-version/--platform/--abi``), which needs no
network in any container and gives one kind of layer for both backends; see ``sandboxes/layers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from executor.errors import Invalid
from executor.tools.requirements import FIELD, Requirements, layer_id
from sandboxes.layers import LayerTarget, native_target

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

LAYERS_DIR = "tool-layers"
META = ".executor-layer.json"
_BUILD_PREFIX = ".build-"
_MAX_LINE = 300  # characters kept of one output line
_TAIL = 30  # lines kept for the error
_MAX_FORWARDED = 2000  # lines passed to logs and progress callbacks per build; the rest is only counted
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\x1b\[[0-9;?]*[A-Za-z]")
# What pip may see of the service's environment: locale, proxies and CA bundles, nothing else (no secrets).
_ENV_PASS = (
    "PATH",
    "LANG",
    "LC_ALL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)


class RequirementsBuildFailed(Invalid):
    """pip could not install a tool's requirements (HTTP 400); ``lines`` are pip's last output lines."""

    def __init__(self, message: str, lines: list[str]) -> None:
        tail = "\n".join(lines[-15:])
        super().__init__("requirements_build_failed", f"{message}\n{tail}" if tail else message, field=FIELD)
        self.lines = lines


@dataclass(frozen=True)
class LayerSettings:
    """How layers are built; from the service's settings."""

    cache_dir: Path
    timeout_s: float = 600.0
    max_layer_mb: int = 1024
    index_url: str | None = None  # None: pip's default index (PyPI)
    find_links: tuple[str, ...] = ()  # extra wheel dirs or pages (offline tests: a local wheelhouse)
    no_index: bool = False  # only find_links
    python: str = sys.executable  # the interpreter whose pip builds (the service's own; it has pip)
    max_concurrent: int = 1  # builds at once: pip is CPU- and network-heavy on a small host


@dataclass(frozen=True)
class Layer:
    """A finished, read-only layer. ``path`` is the directory to put on ``sys.path`` (pass it to ``create``)."""

    id: str
    path: Path
    requirements: tuple[str, ...]
    target: str
    packages: tuple[str, ...]  # name==version of everything installed, dependencies included
    size_bytes: int


@dataclass(eq=False)
class _Build:
    task: asyncio.Task[Layer] | None = None
    listeners: list[Progress] = field(default_factory=list)
    seen: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))

    def emit(self, line: str) -> None:
        self.seen.append(line)
        for listener in list(self.listeners):
            try:
                listener(line)
            except Exception:  # a caller's callback must not break the build others wait for
                log.exception("a layer build progress callback failed")


def _clean(line: str) -> str:
    line = _CONTROL.sub("", line).rstrip()
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."


def _rmtree(path: Path) -> None:
    """Remove a (possibly read-only) tree; a non-root owner needs write permission on dirs to empty them."""

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    # Make every dir writable first (never following symlinks), then remove.
    for dirpath, _dirnames, _filenames in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _seal(root: Path) -> int:
    """Make the tree read-only (dirs 0555, files 0444, or 0555 when executable); returns its size in bytes.
    Symlinks are refused: a wheel cannot carry one, so one here is not pip's doing."""
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "symbolic link in the layer", p)
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
                os.chmod(p, 0o555 if st.st_mode & 0o111 else 0o444)
            elif not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EINVAL, "special file in the layer", p)
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)
    return size


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _installed(root: Path) -> list[str]:
    """name==version of every distribution pip put in the target (its .dist-info METADATA)."""
    out: list[str] = []
    for meta in sorted(root.glob("*.dist-info/METADATA")):
        name = version = ""
        with contextlib.suppress(OSError):
            for line in meta.read_text(errors="replace").splitlines()[:50]:
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
                elif not line.strip():
                    break
        if name:
            out.append(f"{name}=={version}")
    return out


class LayerBuilder:
    """Builds and caches layers. One instance per service; safe for concurrent ``ensure`` calls."""

    def __init__(self, settings: LayerSettings) -> None:
        self.settings = settings
        self.root = settings.cache_dir / LAYERS_DIR
        self._builds: dict[str, _Build] = {}
        self._gate = asyncio.Semaphore(max(1, settings.max_concurrent))
        self._swept = False
        self._native: LayerTarget | None = None

    def native(self) -> LayerTarget:
        """The target of the service's own interpreter (the local backend's kernels)."""
        if self._native is None:
            self._native = native_target()
        return self._native

    def path_of(self, requirements: Requirements, target: LayerTarget | None = None) -> Path:
        """Where the layer for this set and target is (or would be)."""
        return self.root / layer_id(requirements, (target or self.native()).key)

    def building(self) -> list[str]:
        """Ids of the layers being built now."""
        return list(self._builds)

    async def ensure(
        self, requirements: Requirements, progress: Progress | None = None, *, target: LayerTarget | None = None
    ) -> Layer:
        """The layer for ``requirements`` (non-empty) built for ``target`` (default: the service's interpreter).

        Cached: a finished layer is returned at once. Built at most once at a time per layer id: concurrent callers
        wait for the same build and each gets its output lines through ``progress`` (those already printed first).
        A failure is not cached: every waiter gets :class:`RequirementsBuildFailed` with pip's last lines, nothing
        is left in the cache, and the next call tries again."""
        if not requirements:
            raise ValueError("no requirements: a tool without requirements needs no layer")
        target = target or self.native()
        lid = layer_id(requirements, target.key)
        final = self.root / lid
        found = await asyncio.to_thread(self._load, final)
        if found is not None:
            return found
        build = self._builds.get(lid)
        if build is None:
            build = _Build()
            self._builds[lid] = build
            build.task = asyncio.create_task(self._build(lid, requirements, target, build))

            def done(_: asyncio.Task[Layer], lid: str = lid, build: _Build = build) -> None:
                if self._builds.get(lid) is build:
                    del self._builds[lid]

            build.task.add_done_callback(done)
        if progress is not None:
            for line in list(build.seen):  # a caller joining a build in flight first gets what it missed
                try:
                    progress(line)
                except Exception:
                    log.exception("a layer build progress callback failed")
            build.listeners.append(progress)
        assert build.task is not None
        try:
            # Shielded: one caller going away must not cancel the build the others wait for.
            return await asyncio.shield(build.task)
        finally:
            if progress is not None:
                with contextlib.suppress(ValueError):
                    build.listeners.remove(progress)

    async def prune(self, keep: Collection[str]) -> list[str]:
        """Remove every finished layer whose id is not in ``keep`` (the layers of the tools still registered);
        returns the removed ids. Builds in flight are never touched. Only call it for layers no live sandbox
        uses: a bind mount shows the same directory, so its files would vanish inside the sandbox too."""
        keep = set(keep) | set(self._builds)
        return await asyncio.to_thread(self._prune, keep)

    def _prune(self, keep: set[str]) -> list[str]:
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or entry.name in keep:
                continue
            _rmtree(entry)
            removed.append(entry.name)
        return sorted(removed)

    async def close(self) -> None:
        """Cancel builds in flight (their pip is killed, their temporary dirs removed)."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the build ---------------------------------------------------------------------------------------

    def _load(self, final: Path) -> Layer | None:
        try:
            meta = json.loads((final / META).read_text())
            return Layer(
                id=final.name,
                path=final,
                requirements=tuple(meta["requirements"]),
                target=str(meta["target"]),
                packages=tuple(meta["packages"]),
                size_bytes=int(meta["size_bytes"]),
            )
        except FileNotFoundError:
            if final.exists():
                log.warning("layer %s has no %s: removing it so it is built again", final, META)
                _rmtree(final)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("layer %s is unreadable (%s): removing it so it is built again", final, exc)
            _rmtree(final)
            return None

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if self._swept:
            return
        self._swept = True
        # Temporary dirs of builds a crashed service left; a live build elsewhere is younger than its timeout.
        horizon = time.time() - 2 * self.settings.timeout_s
        for entry in self.root.iterdir():
            if entry.name.startswith(_BUILD_PREFIX):
                with contextlib.suppress(OSError):
                    if entry.lstat().st_mtime < horizon:
                        _rmtree(entry)

    def _argv(self, tmp: Path, requirements: Requirements, target: LayerTarget) -> list[str]:
        s = self.settings
        argv = [s.python, "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input", "--no-color"]
        argv += ["install", "--target", str(tmp), "--only-binary=:all:", "--no-cache-dir", "--progress-bar", "off"]
        argv += ["--no-warn-script-location"]
        if target != self.native():
            # Bytecode of the host's Python would be dead weight for another version.
            argv += ["--no-compile", *target.pip_options()]
        if s.no_index:
            argv.append("--no-index")
        elif s.index_url:
            argv += ["--index-url", s.index_url]
        for link in s.find_links:
            argv += ["--find-links", str(link)]
        return [*argv, "--", *requirements.items]

    def _env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _ENV_PASS}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update({"HOME": str(home), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(home)})
        return env

    async def _build(self, lid: str, requirements: Requirements, target: LayerTarget, build: _Build) -> Layer:
        async with self._gate:
            await asyncio.to_thread(self._prepare)
            final = self.root / lid
            found = await asyncio.to_thread(self._load, final)  # another instance may have finished it meanwhile
            if found is not None:
                return found
            work = self.root / f"{_BUILD_PREFIX}{lid}-{secrets.token_hex(4)}"
            tmp, home = work / "layer", work / "home"
            try:
                await asyncio.to_thread(self._mkdirs, work, tmp, home)
                log.info("layer %s: building %s for %s", lid[:12], ", ".join(requirements.items), target.key)
                build.emit(f"building a layer for {', '.join(requirements.items)} ({target.key})")
                lines = await self._pip(lid, self._argv(tmp, requirements, target), home, build)
                layer = await asyncio.to_thread(self._finish, lid, work, tmp, requirements, target, lines)
            finally:
                await asyncio.to_thread(_rmtree, work)
            log.info("layer %s: ready (%d packages, %.1f MiB)", lid[:12], len(layer.packages), layer.size_bytes / 2**20)
            build.emit(f"layer ready: {', '.join(layer.packages)}")
            return layer

    @staticmethod
    def _mkdirs(work: Path, tmp: Path, home: Path) -> None:
        work.mkdir(mode=0o700)
        tmp.mkdir(mode=0o755)
        home.mkdir(mode=0o700)

    async def _pip(self, lid: str, argv: list[str], home: Path, build: _Build) -> list[str]:
        """Run pip; returns its last lines, or raises RequirementsBuildFailed."""
        tail: deque[str] = deque(maxlen=_TAIL)
        forwarded = 0

        def line_out(raw: bytes) -> None:
            nonlocal forwarded
            line = _clean(raw.decode(errors="replace"))
            if not line:
                return
            tail.append(line)
            forwarded += 1
            if forwarded <= _MAX_FORWARDED:
                log.info("layer %s: %s", lid[:12], line)
                build.emit(line)

        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env(home),
            cwd=str(home),
            start_new_session=True,  # its own process group, killed as a whole
        )
        assert proc.stdout is not None
        partial = bytearray()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                while chunk := await proc.stdout.read(65536):
                    partial += chunk
                    *complete, rest = bytes(partial).split(b"\n")
                    for raw in complete:
                        line_out(raw)
                    # A line without an end is cut, not buffered without bound.
                    partial = bytearray(rest[: _MAX_LINE * 4])
                if partial:
                    line_out(bytes(partial))
                rc = await proc.wait()
        except TimeoutError:
            raise RequirementsBuildFailed(
                f"installing the requirements took longer than {self.settings.timeout_s:g} s and was stopped",
                list(tail),
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if forwarded > _MAX_FORWARDED:
            log.info("layer %s: %d more output lines not shown", lid[:12], forwarded - _MAX_FORWARDED)
        if rc != 0:
            raise RequirementsBuildFailed(f"installing the requirements failed (pip exited with {rc}):", list(tail))
        return list(tail)

    def _finish(
        self, lid: str, work: Path, tmp: Path, requirements: Requirements, target: LayerTarget, lines: list[str]
    ) -> Layer:
        limit = self.settings.max_layer_mb * 2**20
        size = _tree_size(tmp)
        if size > limit:
            raise RequirementsBuildFailed(
                f"the installed requirements take {size / 2**20:.0f} MiB, more than the "
                f"{self.settings.max_layer_mb} MiB a layer may take",
                lines,
            )
        packages = _installed(tmp)
        meta = {
            "requirements": list(requirements.items),
            "target": target.key,
            "packages": packages,
            "size_bytes": size,
            "built_at": time.time(),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        try:
            size = _seal(tmp)
        except OSError as exc:
            why = f"the installed requirements cannot be used as a layer: {exc}"
            raise RequirementsBuildFailed(why, lines) from None
        final = self.root / lid
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another instance sharing the cache dir finished the same layer first: use that one.
            found = self._load(final)
            if found is None:
                raise RequirementsBuildFailed("another build of this layer left it unreadable; retry", lines) from None
            return found
        return Layer(
            id=lid,
            path=final,
            requirements=requirements.items,
            target=target.key,
            packages=tuple(packages),
            size_bytes=size,
        )
