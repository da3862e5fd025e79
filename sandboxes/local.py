"""The embedded default backend: an ipykernel subprocess jailed with bubblewrap, limited by cgroup + rlimits.

Jail modes, chosen once at start-up (``LocalBackend.jail``):

``bwrap``        service runs as root. bwrap runs as root *without* a user namespace (so it can bind a Python
                 that lives under a 0700 home), unshares pid/net/ipc/uts/cgroup, and runs ``setpriv`` inside as
                 the command: the kernel gets a per-session uid from a reserved range with no capabilities,
                 an empty bounding set and no_new_privs. Memory, pids and CPU come from a per-session cgroup.
``bwrap-userns`` service runs unprivileged: plain unprivileged bwrap with every namespace incl. the user one.
                 No cgroup; rlimits only (RLIMIT_NPROC counts all of the service user's processes).
``none``         bwrap is missing and the admin opted in with EXECUTOR_ALLOW_UNJAILED=true: a plain kernel
                 (still under a dropped uid when root). Development only; never chosen silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxes.base import EndEvent, Event, Limits, SandboxError, SandboxState, instance_id
from sandboxes.cgroups import Cgroup, CgroupManager
from sandboxes.kernel import KernelDriver, kernel_command, write_connection_files

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"

# Fixed paths inside the jail.
JAIL_WORK = "/work"
JAIL_RUN = "/run/kernel"
JAIL_VENV = "/opt/executor/venv"
JAIL_LIB = "/opt/executor/lib"
JAIL_CACHE = "/opt/executor/cache"

# Loaded before any fork: importing or dlopen-ing in a forked child of a threaded process can deadlock.
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1

# Marks every process a sandbox starts, so orphans of a crashed service can be found and killed.
MARKER_ENV = "EXECUTOR_SANDBOX"


@dataclass(frozen=True)
class LocalConfig:
    """What the local backend needs from the service's settings."""

    data_dir: Path
    run_dir: Path = Path("/tmp")
    cache_dir: Path | None = None
    allow_unjailed: bool = False
    uid_base: int = 61000
    uid_count: int = 1000
    use_cgroups: bool = True
    start_timeout_s: float = 30.0


def _python_layout() -> tuple[Path, Path | None]:
    """(base prefix to bind at its own path, venv to bind at JAIL_VENV or None)."""
    base = Path(sys.base_prefix).resolve()
    venv = Path(sys.prefix).resolve() if sys.prefix != sys.base_prefix else None
    return base, venv


def _dirs_for(path: str) -> list[str]:
    """``--perms 0755 --dir`` for each ancestor: bwrap creates missing parents 0700, unreadable by the uid."""
    args: list[str] = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[: i + 1])]
    return args


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    return args


class LocalBackend:
    """Creates LocalSandboxes; owns what they share (uid range, cgroup parent, jail mode, orphans)."""

    name = "local"

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.instance = instance_id(config.data_dir)
        self.root = config.data_dir / "sandboxes"
        # ipc socket paths must stay under ~100 bytes, so they live in a short dir, not the data dir.
        self.run_root = config.run_dir / f"executor-{self.instance}"
        self.is_root = os.geteuid() == 0
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if self.bwrap and (self.setpriv or not self.is_root):
            self.jail = "bwrap" if self.is_root else "bwrap-userns"
        elif config.allow_unjailed:
            self.jail = "none"
        else:
            missing = "bubblewrap (bwrap)" if not self.bwrap else "setpriv (util-linux)"
            raise SandboxError(
                f"{missing} is not installed, so kernels cannot be jailed. Install it "
                "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
                "or set EXECUTOR_ALLOW_UNJAILED=true to run kernels without a jail (development only)."
            )
        self.cgroups = CgroupManager(self.instance, enabled=config.use_cgroups)
        self._uids_free = list(range(config.uid_base, config.uid_base + config.uid_count))
        self._uids_used: set[int] = set()
        self.python_base, self.venv = _python_layout()
        self.cache_dir = config.cache_dir or config.data_dir / "cache"
        self._check_layout()

    def _check_layout(self) -> None:
        # The base prefix is bound at its own path (the venv's python links to it by absolute path), so it
        # must not lie where the jail mounts something else.
        base = str(self.python_base) + "/"
        if self.jail != "none" and any(base.startswith(x + "/") for x in ("/tmp", JAIL_WORK, "/run", "/proc", "/dev")):
            raise SandboxError(f"the Python at {self.python_base} lies under a path the jail replaces; move it")

    def describe(self) -> dict[str, Any]:
        """What /readyz shows: the jail in force and which limits are really enforced."""
        return {
            "backend": self.name,
            "jail": self.jail,
            "uid_isolation": self.is_root,
            "cgroups": self.cgroups.reason if self.cgroups.available else f"off ({self.cgroups.reason})",
            "network": "none" if self.jail != "none" else "host (unjailed!)",
        }

    def prepare(self) -> dict[str, int]:
        """Create the dirs, remove orphans of a previous run, warm the matplotlib font cache."""
        reaped = self.reap_orphans()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.run_root.mkdir(mode=0o711, exist_ok=True)
        st = os.lstat(self.run_root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise SandboxError(f"{self.run_root} is not a directory owned by the service; remove it")
        os.chmod(self.run_root, 0o711)
        self._warm_font_cache()
        return reaped

    def _warm_font_cache(self) -> None:
        # matplotlib builds its font list on first import (~1 s). Build it once here; each kernel copies it.
        target = self.cache_dir / "matplotlib"
        if any(target.glob("fontlist-*.json")):
            return
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        import subprocess

        env = {**os.environ, "MPLCONFIGDIR": str(target)}
        subprocess.run(
            [sys.executable, "-c", "import matplotlib.font_manager"],
            env=env,
            check=False,
            capture_output=True,
            timeout=120,
        )
        os.chmod(self.cache_dir, 0o755)
        os.chmod(target, 0o755)
        for f in target.iterdir():
            os.chmod(f, 0o644)

    def reap_orphans(self) -> dict[str, int]:
        """Kill every process and remove every cgroup, socket dir and work dir left by an earlier run."""
        killed = 0
        marker = f"{MARKER_ENV}={self.instance}:".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed += 1
        cgroups = len(self.cgroups.reap())
        dirs = 0
        for base in (self.root, self.run_root):
            if base.is_dir():
                for entry in base.iterdir():
                    shutil.rmtree(entry, ignore_errors=True)
                    dirs += 1
        return {"processes": killed, "cgroups": cgroups, "dirs": dirs}

    def shutdown(self) -> None:
        self.reap_orphans()
        self.cgroups.close()
        shutil.rmtree(self.run_root, ignore_errors=True)

    async def start(self) -> dict[str, int]:
        return await asyncio.to_thread(self.prepare)

    async def reap(self) -> dict[str, int]:
        # Local kernels die with their process group and are tracked by pid; only stray cgroups can remain.
        return {}

    async def stop(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def _take_uid(self) -> int:
        if not self.is_root:
            return os.geteuid()
        if not self._uids_free:
            raise SandboxError("no free sandbox uid left; raise EXECUTOR_SANDBOX_UID_COUNT")
        uid = self._uids_free.pop(0)
        self._uids_used.add(uid)
        return uid

    def _give_uid(self, uid: int) -> None:
        if uid in self._uids_used:
            self._uids_used.discard(uid)
            self._uids_free.append(uid)

    async def create(
        self, limits: Limits, env: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None
    ) -> LocalSandbox:
        """Start a new jailed kernel; returns once it is ready to execute."""
        sandbox = LocalSandbox(self, secrets.token_hex(6), limits, dict(env or {}))
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox


class LocalSandbox:
    """One jailed ipykernel. See the module docstring for the jail."""

    def __init__(self, backend: LocalBackend, sandbox_id: str, limits: Limits, env: dict[str, str]) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.limits = limits
        self.env = env
        self.jail = backend.jail
        self.dir = backend.root / sandbox_id
        self.workdir = self.dir / "work"
        self.rundir = backend.run_root / sandbox_id
        self.uid = -1
        self.cgroup: Cgroup | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.driver: KernelDriver | None = None
        self._stderr_tail = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        b = self.backend
        self.uid = b._take_uid()
        self.dir.mkdir(mode=0o700)
        for d in (self.workdir, self.rundir):
            d.mkdir(mode=0o700)
            if b.is_root:
                os.chown(d, self.uid, self.uid)
        await self._launch()

    async def restart(self) -> None:
        """A fresh kernel in the same jail and work dir: state is gone, files stay."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self.driver is not None:
            self.driver.stop_channels()
        await self._kill()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
        if self.cgroup is not None:
            # A new cgroup: the old one's OOM counter would blame the new kernel for the old one's death.
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None
        with contextlib.suppress(FileNotFoundError):
            (self.rundir / "kernel.json").unlink()
        self._stderr_tail.clear()
        await self._launch()

    async def _launch(self) -> None:
        b = self.backend
        host_info = write_connection_files(
            self.dir / "connection.json",
            self.rundir,
            kernel_ip=f"{JAIL_RUN}/k" if self.jail != "none" else None,
            owner=self.uid if b.is_root else None,
        )
        if b.cgroups.available:
            self.cgroup = b.cgroups.create(
                self.id, memory_mb=self.limits.memory_mb, pids=self.limits.pids, cpus=self.limits.cpus
            )
        argv, env = self._command()
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self._in_child,
            start_new_session=True,
            cwd=str(self.workdir),
        )
        self._stderr_task = asyncio.create_task(self._read_stderr())
        self.driver = KernelDriver(host_info, is_alive=lambda: self.alive, exit_reason=lambda: self.exit_reason)
        self.driver.start_channels()
        try:
            await self.driver.wait_ready(b.config.start_timeout_s)
        except SandboxError as exc:
            await asyncio.sleep(0.05)  # let the stderr reader catch the last words
            tail = self.stderr_tail()
            raise SandboxError(f"{exc}{': ' + tail if tail else ''}") from None

    def _kernel_env(self) -> dict[str, str]:
        threads = str(max(1, math.ceil(self.limits.cpus)))
        env = dict(self.env)
        jailed = self.jail != "none"
        env.update(
            {
                "HOME": JAIL_WORK if jailed else str(self.workdir),
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "TMPDIR": "/tmp",
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "MPLCONFIGDIR": "/tmp/matplotlib" if jailed else str(self.dir / "mpl"),
                "IPYTHONDIR": "/tmp/ipython" if jailed else str(self.dir / "ipython"),
                "JUPYTER_RUNTIME_DIR": "/tmp/jupyter" if jailed else str(self.dir / "jupyter"),
                "PYTHONPATH": JAIL_LIB if jailed else str(RUNTIME_DIR.parent),
                "EXECUTOR_FONT_CACHE": (
                    f"{JAIL_CACHE}/matplotlib" if jailed else str(self.backend.cache_dir / "matplotlib")
                ),
                "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                MARKER_ENV: f"{self.backend.instance}:{self.id}",
            }
        )
        return env

    def _command(self) -> tuple[list[str], dict[str, str]]:
        b = self.backend
        env = self._kernel_env()
        jailed = self.jail != "none"
        python = (
            f"{JAIL_VENV}/bin/python"
            if (jailed and b.venv)
            else (str(b.venv / "bin" / "python") if b.venv else sys.executable)
        )
        kernel = kernel_command(
            python,
            f"{JAIL_RUN}/kernel.json" if jailed else str(self.rundir / "kernel.json"),
            "sandbox_runtime" if jailed else "sandboxes.runtime",
        )
        drop = [
            b.setpriv or "setpriv",
            "--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]  # fmt: skip
        if not jailed:
            argv = (drop if b.is_root and b.setpriv else []) + kernel
            return argv, {**env, "PATH": os.environ.get("PATH", env["PATH"])}

        argv = [b.bwrap or "bwrap"]
        if b.is_root:
            # No user namespace: a uid switch inside one fails, and binds of a 0700 home need real root.
            argv += [
                "--unshare-ipc",
                "--unshare-pid",
                "--unshare-net",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ]
        else:
            argv += ["--unshare-all", "--cap-drop", "ALL"]
        argv += ["--die-with-parent", "--new-session"]
        argv += _system_binds()
        base = str(b.python_base)
        if not base.startswith("/usr/"):
            argv += [*_dirs_for(base + "/x"), "--ro-bind", base, base]
        if b.venv:
            argv += [*_dirs_for(JAIL_VENV), "--ro-bind", str(b.venv), JAIL_VENV]
        argv += [*_dirs_for(JAIL_LIB + "/x"), "--ro-bind", str(RUNTIME_DIR), f"{JAIL_LIB}/sandbox_runtime"]
        if (b.cache_dir / "matplotlib").is_dir():
            argv += ["--ro-bind", str(b.cache_dir), JAIL_CACHE]
        argv += ["--perms", "0755", "--dir", "/etc"]
        if Path("/etc/fonts").is_dir():
            argv += ["--ro-bind", "/etc/fonts", "/etc/fonts"]
        argv += ["--ro-bind", str(self._etc_file("passwd")), "/etc/passwd"]
        argv += ["--ro-bind", str(self._etc_file("group")), "/etc/group"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        argv += [
            "--bind",
            str(self.workdir),
            JAIL_WORK,
            *_dirs_for(JAIL_RUN),
            "--bind",
            str(self.rundir),
            JAIL_RUN,
        ]
        argv += ["--chdir", JAIL_WORK, "--clearenv"]
        for k, v in env.items():
            argv += ["--setenv", k, v]
        argv += ["--"]
        if b.is_root:
            argv += drop
        argv += kernel
        # bwrap itself gets only the marker, so a crashed service's orphans can still be found.
        return argv, {MARKER_ENV: env[MARKER_ENV], "PATH": "/usr/bin:/bin"}

    def _etc_file(self, name: str) -> Path:
        path = self.dir / name
        if not path.exists():
            if name == "passwd":
                text = f"root:x:0:0::/nonexistent:/usr/sbin/nologin\nsandbox:x:{self.uid}:{self.uid}::/work:/bin/sh\n"
            else:
                text = f"root:x:0:\nsandbox:x:{self.uid}:\n"
            path.write_text(text)
            os.chmod(path, 0o644)
        return path

    def _in_child(self) -> None:
        # Runs between fork and exec: join the cgroup first so nothing runs outside it, then the rlimits,
        # which every process of the sandbox inherits.
        if self.cgroup is not None:
            self.cgroup.join()
        mb = 1024 * 1024
        fsize = self.limits.file_size_mb * mb
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.limits.open_files, self.limits.open_files))
        if self.cgroup is None:
            # Backstops where no cgroup enforces memory and pids. NPROC counts per uid: exact when each
            # sandbox has its own uid, shared with the service user otherwise.
            if self.backend.is_root:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.limits.pids, self.limits.pids))
            mem = (self.limits.memory_mb + 1024) * mb
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        # Die with the service even before bwrap's own --die-with-parent is in place.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._stderr_tail += chunk
            del self._stderr_tail[:-4096]

    # -- protocol ---------------------------------------------------------------------------------------

    @property
    def file_owner(self) -> int | None:
        """The uid that must own files the service puts in the work dir (None: leave as is)."""
        return self.uid if self.backend.is_root else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self._closed

    @property
    def state(self) -> SandboxState:
        if self._closed:
            return "closed"
        return "idle" if self.alive else ("starting" if self.proc is None else "dead")

    @property
    def ref(self) -> str | None:
        return None

    async def kill(self, reason: str) -> None:
        await self._kill()

    @property
    def exit_reason(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return "the sandbox was closed" if self._closed else None
        code = self.proc.returncode
        if self.cgroup is not None and self.cgroup.oom_killed():
            return f"the kernel ran out of memory (limit {self.limits.memory_mb} MiB) and was killed"
        if code < 0 or code > 128:
            signum = -code if code < 0 else code - 128
            with contextlib.suppress(ValueError):
                return f"the kernel was killed by {signal.Signals(signum).name}"
        return f"the kernel exited with status {code}"

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines the kernel process wrote to stderr: what a start-up failure says."""
        return "\n".join(self._stderr_tail.decode(errors="replace").strip().splitlines()[-lines:])

    async def execute(self, code: str, *, timeout: float, silent: bool = False) -> AsyncIterator[Event]:
        if self.driver is None or not self.alive:
            yield EndEvent(status="dead", reason=self.exit_reason or "the kernel is not running", kernel_alive=False)
            return
        async for event in self.driver.execute(code, timeout=timeout, silent=silent):
            if isinstance(event, EndEvent) and not event.kernel_alive and self.alive:
                await self._kill()
            yield event

    async def interrupt(self) -> None:
        if self.driver is not None and self.alive:
            await self.driver.interrupt()

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            # The whole process group: unjailed kernels have no pid namespace to take their children down.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def close(self) -> None:
        """Kill the kernel and all it started; remove the cgroup, socket dir and work dir."""
        if self._closed:
            return
        self._closed = True
        if self.driver is not None:
            self.driver.stop_channels()
        await self._kill()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        # Off the event loop: rmtree of a big work dir and the cgroup drain can take a while.
        await asyncio.to_thread(self._cleanup)
        self.backend._give_uid(self.uid)

    def _cleanup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.rundir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
