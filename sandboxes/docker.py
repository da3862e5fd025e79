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
import logging
import math
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from sandboxes.base import Limits, SandboxError
from sandboxes.egress import PIP_TARGET, egress_env
from sandboxes.kernel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KernelPaths,
    KernelSandbox,
    exit_status_reason,
    kernel_command,
    kernel_context,
)
from sandboxes.layers import PROBE, LayerTarget, layer_mounts, parse_probe_output
from sandboxes.mounts import WorkDirTmpfs, unmount, unmount_under
from sandboxes.registry import Registry

log = logging.getLogger(__name__)

LABEL_INSTANCE = "executor.instance"
LABEL_SANDBOX = "executor.sandbox"
SANDBOX_UID = 10001
IN_RUN = "/run/kernel"
IN_WORK = "/work"
IN_PYTHON = "/opt/venv/bin/python"


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
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class DockerBackend:
    """Creates container sandboxes; owns the client, the die/oom event watcher, the reaper and the ZMQ context."""

    name = "docker"
    shared = False

    def __init__(self, config: DockerConfig) -> None:
        import docker
        import docker.errors

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
                f"the Docker engine is not reachable ({type(exc).__name__}: {exc}): start dockerd "
                "(scripts/docker-engine does it on Debian), or point DOCKER_HOST at an engine"
            ) from None
        try:
            self.client.images.get(config.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"the sandbox image {config.image!r} is not on this engine: build it with images/build "
                "(or set EXECUTOR_DOCKER_IMAGE)"
            ) from None
        except Exception as exc:
            raise SandboxError(
                f"could not look up the sandbox image {config.image!r} ({type(exc).__name__}: {exc})"
            ) from None
        info = self.client.info()
        self.security = [str(o) for o in info.get("SecurityOptions", [])]
        self.runtimes = sorted(info.get("Runtimes", {}))
        if config.runtime and config.runtime not in self.runtimes:
            raise SandboxError(f"the engine has no runtime {config.runtime!r} (it has {', '.join(self.runtimes)})")
        self.tmpfs = WorkDirTmpfs(config.work_dir_size_mb)
        self.context: zmq.asyncio.Context | None = None
        self.sandboxes: Registry[ContainerProcess] = Registry(self.root)
        self._live = self.sandboxes.live
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None
        self._watcher: threading.Thread | None = None
        self._stopping = False
        self._layer_target: LayerTarget | None = None

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
            "work_dir": self.tmpfs.describe(),
            "live_sandboxes": len(self._live),
        }

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, keep: Collection[str] = ()) -> dict[str, int]:
        self.context = kernel_context(self.config.max_message_bytes)
        return await asyncio.to_thread(self.prepare, asyncio.get_running_loop(), keep)

    async def reap(self) -> dict[str, int]:
        return await asyncio.to_thread(self.reap_orphans)

    def prepare(self, loop: asyncio.AbstractEventLoop, keep: Collection[str] = ()) -> dict[str, int]:
        """Start watching container deaths, then remove what an earlier run left."""
        self._loop = loop
        self.sandboxes.keep(keep)
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
                    process = self._live.get(attrs.get(LABEL_SANDBOX, ""))
                    if process is not None:
                        self._seen(process, event.get("id"), event.get("status"), attrs.get("exitCode"))
            except Exception:
                if not self._stopping:
                    log.warning("docker event stream lost; subscribing again", exc_info=True)
            if not self._stopping:
                time.sleep(1)

    def _seen(self, process: ContainerProcess, container_id: str | None, status: str | None, code: str | None) -> None:
        # On this thread, not the loop: a 137 without an oom event may still be an OOM kill, and asking the
        # engine blocks.
        oom = status == "oom"
        if status == "die" and code == "137" and not process.oom:
            oom = self._oom_killed(container_id)
        self._notify(process, container_id, "oom" if oom else None, None)
        if status == "die":
            self._notify(process, container_id, "die", code)

    def _oom_killed(self, container_id: str | None) -> bool:
        if container_id is None:
            return False
        try:
            attrs = self.client.api.inspect_container(container_id)
        except Exception as exc:
            log.info("could not inspect container %s after its death: %s", container_id[:12], exc)
            return False
        return bool(attrs.get("State", {}).get("OOMKilled"))

    def _reconcile(self) -> None:
        for process in list(self._live.values()):
            container = process.container
            if container is None:
                continue
            try:
                state = self.client.api.inspect_container(container.id)["State"]
            except Exception as exc:
                log.info("container %s of sandbox %s is gone: %s", container.id[:12], process.id, exc)
                state = {"Running": False, "ExitCode": -1}
            if not state.get("Running", False):
                if state.get("OOMKilled"):
                    self._notify(process, container.id, "oom", None)
                self._notify(process, container.id, "die", str(state.get("ExitCode", -1)))

    def _notify(
        self, process: ContainerProcess, container_id: str | None, status: str | None, code: str | None
    ) -> None:
        if status is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(process.on_event, container_id, status, code)

    def reap_orphans(self) -> dict[str, int]:
        """Remove containers of this instance that no live sandbox owns, and their dirs and mounts (the work
        dirs of kept sandboxes stay)."""
        removed = 0
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={self.instance}"}):
            if c.labels.get(LABEL_SANDBOX) not in self._live:
                try:
                    c.remove(force=True)
                    removed += 1
                except Exception as exc:
                    log.warning("could not remove orphan container %s: %s", c.id[:12], exc)
        dirs = 0
        keep = set(self._live)
        for base in (self.root, self.run_root):
            if base.is_dir():
                for entry in base.iterdir():
                    if entry.name in keep or (base == self.root and entry.name in self.sandboxes.kept):
                        continue
                    unmount_under(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                    dirs += 1
        return {"containers": removed, "dirs": dirs}

    def workdir_of(self, sandbox_id: str) -> Path | None:
        return self.sandboxes.workdir_of(sandbox_id)

    async def discard(self, sandbox_id: str) -> None:
        await self.sandboxes.discard(sandbox_id)

    async def stop(self) -> None:
        """Remove every container of this instance (waits for pending teardowns)."""
        for process in list(self._live.values()):
            if process.sandbox is not None:
                await process.sandbox.close()
        await self.sandboxes.drain()
        self.sandboxes.kept.clear()
        await asyncio.to_thread(self.reap_orphans)
        self._stopping = True
        if self._events is not None:
            with contextlib.suppress(Exception):  # closing a stream that already ended raises; nothing to do
                self._events.close()
        shutil.rmtree(self.run_root, ignore_errors=True)
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None

    async def layer_target(self) -> LayerTarget:
        """The image's interpreter, probed once in a throwaway container (no network, read-only, no capabilities)."""
        if self._layer_target is None:
            output = await asyncio.to_thread(self._probe)
            self._layer_target = parse_probe_output(output)
            log.info("docker: package layers target %s (image %s)", self._layer_target.key, self.config.image)
        return self._layer_target

    def _probe(self) -> bytes:
        try:
            out = self.client.containers.run(
                self.config.image,
                [IN_PYTHON, "-I", "-c", PROBE],
                remove=True,
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                read_only=True,
                mem_limit="128m",
                pids_limit=16,
                labels={LABEL_INSTANCE: self.instance, LABEL_SANDBOX: "layer-probe"},
                stdout=True,
                stderr=False,
            )
        except Exception as exc:
            raise SandboxError(f"could not probe the interpreter of {self.config.image!r}: {exc}") from None
        return bytes(out)

    async def create(
        self,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        layers: Sequence[Path] = (),
    ) -> KernelSandbox:
        """A started container sandbox; ``layers`` are bind-mounted read-only at ``/opt/executor/layers/<n>`` and
        put on ``PYTHONPATH`` after the runtime. (A service in a container needs the layer cache at the same
        path as on the host, like its data dir: mount sources are host paths.)"""
        mounts = layer_mounts(layers)
        sandbox_id = secrets.token_hex(6)
        process = ContainerProcess(self, sandbox_id, limits, dict(env or {}), dict(labels or {}), mounts)
        sandbox = KernelSandbox(
            sandbox_id,
            limits,
            process,
            start_timeout_s=self.config.start_timeout_s,
            context=self.context,
            max_message_bytes=self.config.max_message_bytes,
            on_closed=self.sandboxes.track,
        )
        process.sandbox = sandbox
        self._live[sandbox_id] = process
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox


class ContainerProcess:
    """The provisioner of one container running one kernel."""

    jail = "docker"

    def __init__(
        self,
        backend: DockerBackend,
        sandbox_id: str,
        limits: Limits,
        env: dict[str, str],
        labels: dict[str, str] | None = None,
        layers: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.labels = labels or {}
        self.layers = list(layers)  # (host dir, path in the container)
        self.limits = limits
        self.env = env
        d = backend.root / sandbox_id
        self.paths = KernelPaths(dir=d, rundir=backend.run_root / sandbox_id, workdir=d / "work")
        self.sandbox: KernelSandbox | None = None
        self.container: Any = None
        self.exit_code: int | None = None
        self.oom = False
        self._mounted = False
        self._died = asyncio.Event()

    @property
    def kernel_ip(self) -> str | None:
        return f"{IN_RUN}/k"

    @property
    def file_owner(self) -> int | None:
        return SANDBOX_UID if os.geteuid() == 0 else None

    @property
    def ref(self) -> str | None:
        return None if self.container is None else str(self.container.id)

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)

    def _prepare_dirs(self) -> None:
        self._mounted = self.paths.create(self.backend.tmpfs, tmpfs_uid=SANDBOX_UID, owner=self.file_owner)

    async def launch(self) -> None:
        self.exit_code = None
        self.oom = False
        self._died.clear()
        self.container = await asyncio.to_thread(self._run_container)

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
            "PYTHONPATH": ":".join(["/opt/executor/lib", *(inside for _, inside in self.layers), PIP_TARGET]),
            "EXECUTOR_FONT_CACHE": "/opt/executor/cache/matplotlib",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            # --network none leaves loopback only: every outbound byte goes through the service's proxy.
            **egress_env(IN_RUN),
        }
        fsize = lim.file_size_mb * 1024 * 1024
        return self.backend.client.containers.run(
            cfg.image,
            kernel_command(IN_PYTHON, f"{IN_RUN}/kernel.json", "sandbox_runtime"),
            name=f"executor-{self.backend.instance}-{self.id}-{secrets.token_hex(2)}",
            detach=True,
            labels={**self.labels, LABEL_INSTANCE: self.backend.instance, LABEL_SANDBOX: self.id},
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            read_only=True,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmp_size_mb}m",
                # pip's target (packages installed through the egress proxy): exec, as /work is, so compiled
                # extensions load; capped like the work dir, and counted in the memory limit as every tmpfs is.
                PIP_TARGET: f"rw,nosuid,nodev,exec,size={cfg.work_dir_size_mb}m,uid={SANDBOX_UID},"
                f"gid={SANDBOX_UID},mode=0755",
            },
            mounts=[
                Mount(IN_WORK, str(self.paths.workdir), type="bind"),
                Mount(IN_RUN, str(self.paths.rundir), type="bind"),
                *(Mount(inside, str(host), type="bind", read_only=True) for host, inside in self.layers),
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

    def on_event(self, container_id: str | None, status: str | None, exit_code: str | None) -> None:
        # After a restart the old container's death still arrives: only the current one counts.
        if self.container is None or container_id != self.container.id:
            return
        if status == "oom":
            self.oom = True
        elif status == "die":
            self.exit_code = int(exit_code) if exit_code and exit_code.lstrip("-").isdigit() else -1
            self._died.set()

    def poll(self) -> int | None:
        return self.exit_code

    async def settle(self) -> None:
        # The die event may trail the socket going quiet; give the reason a moment to arrive.
        if self.exit_code is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._died.wait(), 1.0)

    def exit_reason(self) -> str | None:
        if self.exit_code is None:
            return None
        if self.oom:
            return f"the kernel ran out of memory (limit {self.limits.memory_mb} MiB) and was killed"
        if self.exit_code > 128:
            with contextlib.suppress(ValueError):
                return f"the kernel was killed by {signal.Signals(self.exit_code - 128).name}"
        return exit_status_reason(self.exit_code)

    def diagnostics(self) -> str:
        return ""

    async def kill(self) -> None:
        """Kill the container by ID (never only a client process: the container would live on)."""
        if self.container is None or self.exit_code is not None:
            return
        try:
            await asyncio.to_thread(self.container.kill)
        except Exception as exc:
            log.info("kill of container %s: %s", self.container.id[:12], exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._died.wait(), 2.0)
        if self.exit_code is None:
            self.exit_code = 137
            self._died.set()

    async def cleanup(self, *, restart: bool) -> None:
        old, self.container = self.container, None
        await asyncio.to_thread(self._release, old, restart)

    def _release(self, container: Any, restart: bool) -> None:
        if container is not None:
            try:
                container.remove(force=True)
            except Exception as exc:
                log.warning("could not remove container %s: %s", container.id[:12], exc)
        if restart:
            return
        if self._mounted:
            unmount(self.paths.workdir)
        shutil.rmtree(self.paths.rundir, ignore_errors=True)
        shutil.rmtree(self.paths.dir, ignore_errors=True)
