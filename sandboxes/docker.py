"""Docker backend: one hardened container per sandbox, its kernel reached over ipc sockets.

The container has no network at all (``--network none``); the service's jupyter-client talks to the kernel
over Unix sockets in a per-sandbox host directory bind-mounted at ``/run/kernel``. The work dir is a size-capped
tmpfs that the service mounts on the host and binds at ``/work``, so the service reads and writes files with
plain (symlink-safe) file operations, never through the container. Every Docker SDK call runs off the event loop.
Flags follow ../shared/isolation-facts.md section 4; the runtime adds a seccomp filter before user code (D1b).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxes.base import EndEvent, Event, Limits, SandboxError, SandboxState
from sandboxes.kernel import KernelDriver, kernel_command, write_connection_files

log = logging.getLogger(__name__)

LABEL_INSTANCE = "executor.instance"
LABEL_SANDBOX = "executor.sandbox"
SANDBOX_UID = 10001
IN_RUN = "/run/kernel"
IN_WORK = "/work"
IN_PYTHON = "/opt/venv/bin/python"

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


@dataclass(frozen=True)
class DockerConfig:
    """What the Docker backend needs from the service's settings."""

    data_dir: Path
    instance: str
    run_dir: Path = Path("/tmp")
    image: str = "executor-sandbox:latest"
    runtime: str | None = None  # "runsc" for gVisor when the engine offers it
    work_dir_size_mb: int = 256
    tmp_size_mb: int = 64
    start_timeout_s: float = 30.0


def _mount_tmpfs(target: Path, size_mb: int, uid: int) -> str | None:
    """Mount a size-capped tmpfs owned by ``uid``; returns why not, or None on success."""
    opts = f"size={size_mb}m,uid={uid},gid={uid},mode=0700".encode()
    rc = _libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts)
    if rc != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _unmount_under(root: Path) -> int:
    """Detach every mount below ``root`` (work dirs of sandboxes that were not cleaned up)."""
    prefix = str(root) + "/"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                if _libc.umount2(point.encode(), _MNT_DETACH) == 0:
                    count += 1
    return count


class DockerBackend:
    """Creates DockerSandboxes; owns the client, the die/oom event watcher and the reaper."""

    name = "docker"

    def __init__(self, config: DockerConfig) -> None:
        import docker

        self.config = config
        self.instance = config.instance
        self.root = config.data_dir / "docker"
        # Bind-mount sources are host paths: when the service itself runs in a container, data_dir and run_dir
        # must be mounted at the same paths as on the host (see compose.yaml).
        self.run_root = config.run_dir / f"executor-{config.instance}-d"
        try:
            self.client = docker.from_env(timeout=30)
            self.version = self.client.version()
        except Exception as exc:
            raise SandboxError(
                f"the Docker engine is not reachable ({type(exc).__name__}): start dockerd (scripts/docker-engine "
                "does it on Debian), or point DOCKER_HOST at an engine"
            ) from None
        try:
            self.client.images.get(config.image)
        except Exception:
            raise SandboxError(
                f"the sandbox image {config.image!r} is not on this engine: build it with images/build "
                "(or set EXECUTOR_DOCKER_IMAGE)"
            ) from None
        info = self.client.info()
        self.security = [str(o) for o in info.get("SecurityOptions", [])]
        self.runtimes = sorted(info.get("Runtimes", {}))
        if config.runtime and config.runtime not in self.runtimes:
            raise SandboxError(f"the engine has no runtime {config.runtime!r} (it has {', '.join(self.runtimes)})")
        self.can_mount = os.geteuid() == 0
        self.mount_error = "the service does not run as root"
        self._live: dict[str, DockerSandbox] = {}
        self._teardowns: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None
        self._watcher: threading.Thread | None = None
        self._stopping = False

    def describe(self) -> dict[str, Any]:
        """What /readyz shows: engine, image, and the isolation features really in force."""
        return {
            "backend": self.name,
            "engine": f"Docker {self.version.get('Version')} (API {self.version.get('ApiVersion')})",
            "image": self.config.image,
            "runtime": self.config.runtime or "runc",
            "runtimes_available": self.runtimes,
            "seccomp": any("seccomp" in o for o in self.security),
            "userns_remap": any("userns" in o for o in self.security),
            "apparmor": any("apparmor" in o for o in self.security),
            "network": "none",
            "work_dir": (
                f"tmpfs {self.config.work_dir_size_mb} MiB"
                if self.can_mount
                else f"host dir, size not capped ({self.mount_error})"
            ),
            "live_sandboxes": len(self._live),
        }

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> dict[str, int]:
        return await asyncio.to_thread(self.prepare, asyncio.get_running_loop())

    async def reap(self) -> dict[str, int]:
        return await asyncio.to_thread(self.reap_orphans)

    def prepare(self, loop: asyncio.AbstractEventLoop) -> dict[str, int]:
        """Start watching container deaths, then remove what an earlier run left."""
        self._loop = loop
        self._watcher = threading.Thread(target=self._watch, name="docker-events", daemon=True)
        self._watcher.start()
        reaped = self.reap_orphans()
        for d in (self.root, self.run_root):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o711)
        return reaped

    def _watch(self) -> None:
        # The stream ends when the engine restarts: subscribe again, then look at every live container, so
        # a death that happened while nobody listened is not missed.
        while not self._stopping:
            try:
                self._events = self.client.events(
                    decode=True,
                    filters={
                        "type": "container",
                        "event": ["die", "oom"],
                        "label": [f"{LABEL_INSTANCE}={self.instance}"],
                    },
                )
                self._reconcile()
                for event in self._events:
                    attrs = event.get("Actor", {}).get("Attributes", {})
                    sandbox = self._live.get(attrs.get(LABEL_SANDBOX, ""))
                    if sandbox is not None:
                        self._notify(sandbox, event.get("id"), event.get("status"), attrs.get("exitCode"))
            except Exception:
                log.warning("docker event stream lost; subscribing again", exc_info=True)
            if not self._stopping:
                time.sleep(1)

    def _reconcile(self) -> None:
        for sandbox in list(self._live.values()):
            container = sandbox.container
            if container is None:
                continue
            try:
                container.reload()
                state = container.attrs["State"]
            except Exception:
                state = {"Running": False, "ExitCode": -1}
            if not state.get("Running", False):
                if state.get("OOMKilled"):
                    self._notify(sandbox, container.id, "oom", None)
                self._notify(sandbox, container.id, "die", str(state.get("ExitCode", -1)))

    def _notify(self, sandbox: DockerSandbox, container_id: str | None, status: str | None, code: str | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(sandbox._on_event, container_id, status, code)

    def reap_orphans(self) -> dict[str, int]:
        """Remove containers of this instance that no live sandbox owns, and their dirs and mounts."""
        removed = 0
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={self.instance}"}):
            if c.labels.get(LABEL_SANDBOX) not in self._live:
                with contextlib.suppress(Exception):
                    c.remove(force=True)
                    removed += 1
        dirs = 0
        keep = set(self._live)
        for base in (self.root, self.run_root):
            if base.is_dir():
                for entry in base.iterdir():
                    if entry.name not in keep:
                        _unmount_under(entry)
                        shutil.rmtree(entry, ignore_errors=True)
                        dirs += 1
        return {"containers": removed, "dirs": dirs}

    async def stop(self) -> None:
        """Remove every container of this instance (waits for pending teardowns)."""
        for sandbox in list(self._live.values()):
            await sandbox.close()
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
        await asyncio.to_thread(self.reap_orphans)
        self._stopping = True
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        shutil.rmtree(self.run_root, ignore_errors=True)

    async def create(
        self, limits: Limits, env: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None
    ) -> DockerSandbox:
        sandbox = DockerSandbox(self, secrets.token_hex(6), limits, dict(env or {}), dict(labels or {}))
        self._live[sandbox.id] = sandbox
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox


class DockerSandbox:
    """One container running one kernel."""

    jail = "docker"

    def __init__(
        self,
        backend: DockerBackend,
        sandbox_id: str,
        limits: Limits,
        env: dict[str, str],
        labels: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.labels = labels or {}
        self.limits = limits
        self.env = env
        self.dir = backend.root / sandbox_id
        self.workdir = self.dir / "work"
        self.rundir = backend.run_root / sandbox_id
        self.container: Any = None
        self.driver: KernelDriver | None = None
        self._exit_code: int | None = None
        self._oom = False
        self._closed = False
        self._mounted = False

    @property
    def file_owner(self) -> int | None:
        return SANDBOX_UID if os.geteuid() == 0 else None

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        await self._launch()

    async def restart(self) -> None:
        """A fresh container and kernel on the same work dir (a host tmpfs): state is gone, files stay."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self.driver is not None:
            self.driver.stop_channels()
        old = self.container
        self.container = None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(old.remove, force=True)
        self._exit_code = None
        self._oom = False
        with contextlib.suppress(FileNotFoundError):
            (self.rundir / "kernel.json").unlink()
        await self._launch()

    async def _launch(self) -> None:
        info = write_connection_files(
            self.dir / "connection.json", self.rundir, kernel_ip=f"{IN_RUN}/k", owner=self.file_owner
        )
        self.container = await asyncio.to_thread(self._run_container)
        self.driver = KernelDriver(info, is_alive=lambda: self.alive, exit_reason=lambda: self.exit_reason)
        self.driver.start_channels()
        await self.driver.wait_ready(self.backend.config.start_timeout_s)

    def _prepare_dirs(self) -> None:
        self.dir.mkdir(mode=0o700)
        self.workdir.mkdir(mode=0o700)
        self.rundir.mkdir(mode=0o700)
        owner = self.file_owner
        if self.backend.can_mount:
            why = _mount_tmpfs(self.workdir, self.backend.config.work_dir_size_mb, SANDBOX_UID)
            if why is None:
                self._mounted = True
            else:
                # Typically a service inside a container without CAP_SYS_ADMIN: stop trying, and say so.
                log.warning("work dir tmpfs not mounted (%s): work dir sizes are not capped", why)
                self.backend.can_mount = False
                self.backend.mount_error = why
        if owner is not None:
            os.chown(self.workdir, owner, owner)
            os.chown(self.rundir, owner, owner)

    def _run_container(self) -> Any:
        from docker.types import LogConfig, Mount, Ulimit

        cfg = self.backend.config
        lim = self.limits
        threads = str(max(1, math.ceil(lim.cpus)))
        env = {
            **self.env,
            "HOME": IN_WORK,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": "/tmp/matplotlib",
            "IPYTHONDIR": "/tmp/ipython",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter",
            "PYTHONPATH": "/opt/executor/lib",
            "EXECUTOR_FONT_CACHE": "/opt/executor/cache/matplotlib",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        fsize = lim.file_size_mb * 1024 * 1024
        return self.backend.client.containers.run(
            cfg.image,
            kernel_command(IN_PYTHON, f"{IN_RUN}/kernel.json", "sandbox_runtime"),
            name=f"executor-{self.backend.instance}-{self.id}",
            detach=True,
            labels={**self.labels, LABEL_INSTANCE: self.backend.instance, LABEL_SANDBOX: self.id},
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmp_size_mb}m"},
            mounts=[
                Mount(IN_WORK, str(self.workdir), type="bind"),
                Mount(IN_RUN, str(self.rundir), type="bind"),
            ],
            working_dir=IN_WORK,
            mem_limit=f"{lim.memory_mb}m",
            memswap_limit=f"{lim.memory_mb}m",
            pids_limit=lim.pids,
            nano_cpus=int(lim.cpus * 1e9),
            ulimits=[
                Ulimit(name="nofile", soft=lim.open_files, hard=lim.open_files),
                Ulimit(name="fsize", soft=fsize, hard=fsize),
                Ulimit(name="core", soft=0, hard=0),
            ],
            init=True,
            log_config=LogConfig(type="none"),
            environment=env,
            runtime=cfg.runtime,
        )

    def _on_event(self, container_id: str | None, status: str | None, exit_code: str | None) -> None:
        # After a restart the old container's death still arrives: only the current one counts.
        if self.container is None or container_id != self.container.id:
            return
        if status == "oom":
            self._oom = True
        elif status == "die":
            self._exit_code = int(exit_code) if exit_code and exit_code.lstrip("-").isdigit() else -1

    # -- protocol ---------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.container is not None and self._exit_code is None and not self._closed

    @property
    def state(self) -> SandboxState:
        if self._closed:
            return "closed"
        return "idle" if self.alive else ("starting" if self.container is None else "dead")

    @property
    def ref(self) -> str | None:
        return None if self.container is None else str(self.container.id)

    @property
    def exit_reason(self) -> str | None:
        if self._exit_code is None:
            return "the sandbox was closed" if self._closed else None
        if self._oom or (self._exit_code == 137 and self._oom_killed()):
            return f"the kernel ran out of memory (limit {self.limits.memory_mb} MiB) and was killed"
        if self._exit_code > 128:
            with contextlib.suppress(ValueError):
                return f"the kernel was killed by {signal.Signals(self._exit_code - 128).name}"
        return f"the kernel exited with status {self._exit_code}"

    def _oom_killed(self) -> bool:
        with contextlib.suppress(Exception):
            self.container.reload()
            return bool(self.container.attrs["State"].get("OOMKilled"))
        return False

    async def execute(self, code: str, *, timeout: float, silent: bool = False) -> AsyncIterator[Event]:
        if self.driver is None or not self.alive:
            reason = self.exit_reason or "the kernel is not running"
            yield EndEvent(status="dead", reason=reason, kernel_alive=False)
            return
        async for event in self.driver.execute(code, timeout=timeout, silent=silent):
            if isinstance(event, EndEvent) and not event.kernel_alive and self.alive:
                await self.kill()
            if isinstance(event, EndEvent) and event.status == "dead":
                # The die event may trail the socket going quiet; give the reason a moment to arrive.
                for _ in range(20):
                    if self._exit_code is not None:
                        break
                    await asyncio.sleep(0.05)
                event = EndEvent(status="dead", reason=self.exit_reason or event.reason, kernel_alive=False)
            yield event

    async def interrupt(self) -> None:
        if self.driver is not None and self.alive:
            await self.driver.interrupt()

    async def kill(self, reason: str = "killed") -> None:
        """Kill the container by ID (never only a client process: the container would live on)."""
        if self.container is not None and self._exit_code is None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.container.kill)
            for _ in range(40):
                if self._exit_code is not None:
                    break
                await asyncio.sleep(0.05)
            if self._exit_code is None:
                self._exit_code = 137

    async def close(self) -> None:
        """Stop talking to the kernel now; remove the container, mount and dirs in the background."""
        if self._closed:
            return
        self._closed = True
        if self.driver is not None:
            self.driver.stop_channels()
        task = asyncio.create_task(asyncio.to_thread(self._teardown))
        self.backend._teardowns.add(task)
        task.add_done_callback(self.backend._teardowns.discard)

    def _teardown(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
        if self._mounted:
            _libc.umount2(str(self.workdir).encode(), _MNT_DETACH)
        shutil.rmtree(self.rundir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.backend._live.pop(self.id, None)
