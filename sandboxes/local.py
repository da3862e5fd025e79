"""The embedded default backend: an ipykernel subprocess jailed with bubblewrap, limited by cgroup + rlimits.

Jail modes, chosen once at start-up (``LocalBackend.jail``):

``bwrap``        service runs as root. bwrap runs as root *without* a user namespace (so it can bind a Python
                 that lives under a 0700 home), unshares pid/net/ipc/uts/cgroup, and runs ``setpriv`` inside as
                 the command: the kernel gets a per-session uid from a reserved range with no capabilities,
                 an empty bounding set and no_new_privs. Memory, pids and CPU come from a per-session cgroup.
``bwrap-userns`` service runs unprivileged: plain unprivileged bwrap with every namespace incl. the user one.
                 No cgroup; rlimits only. RLIMIT_NPROC bounds the sandbox's processes: since Linux 5.14 it is
                 counted per user namespace, and each sandbox has its own.
``none``         bwrap is missing and the admin opted in with EXECUTOR_ALLOW_UNJAILED=true: a plain kernel
                 (still under a dropped uid when root). Development only; never chosen silently.

Limits are applied by a chain of small exec'd programs, not by Python between fork and exec (``preexec_fn`` in a
threaded process can deadlock): ``setpriv --pdeathsig`` (die with the service), ``sh`` joining the cgroup, then
``prlimit`` (core, file size, open files, and processes and address space where no cgroup bounds them).
The work dir is a size-capped tmpfs when the service may mount (root), as in the Docker backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import platform
import random
import secrets
import shutil
import signal
import stat
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from sandboxes.base import Limits, SandboxError, instance_id
from sandboxes.cgroups import Cgroup, CgroupManager
from sandboxes.egress import PIP_TARGET, egress_env
from sandboxes.kernel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KernelPaths,
    KernelSandbox,
    exit_status_reason,
    kernel_command,
    kernel_context,
)
from sandboxes.layers import LayerTarget, layer_mounts, native_target
from sandboxes.mounts import WorkDirTmpfs, unmount, unmount_under
from sandboxes.registry import Registry

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"

# Fixed paths inside the jail.
JAIL_WORK = "/work"
JAIL_RUN = "/run/kernel"
JAIL_VENV = "/opt/executor/venv"
JAIL_LIB = "/opt/executor/lib"
JAIL_CACHE = "/opt/executor/cache"

# Joins the cgroups named by its arguments, then execs the rest: the sandbox starts inside them.
_JOIN_CGROUPS = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 71; shift; n=$((n-1)); done; exec "$@"'
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
    work_dir_size_mb: int = 256
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Host-wide: every instance on the host takes its uids here, so two instances never share one.
    uid_lock_dir: Path | None = None


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


def _userns_counts_nproc() -> bool:
    """RLIMIT_NPROC is counted per user namespace since Linux 5.14 (ucounts)."""
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


class UidPool:
    """Sandbox uids from a reserved range, held with ``flock`` on one file per uid in a host-wide dir.

    A lock lives as long as its open file: a crashed service's uids free themselves, and another instance on
    the same host (another data dir) never gets a uid in use.
    """

    def __init__(self, lock_dir: Path, base: int, count: int) -> None:
        self.lock_dir = lock_dir
        self.base = base
        self.count = count
        self._held: dict[int, int] = {}

    def prepare(self) -> None:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise SandboxError(f"{self.lock_dir} is not a directory only the service may write; remove it")

    def take(self) -> int:
        start = random.randrange(self.count)
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid in self._held:
                continue
            fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise SandboxError("no free sandbox uid left on this host; raise EXECUTOR_SANDBOX_UID_COUNT")

    def give(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for uid in list(self._held):
            self.give(uid)


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
    """Creates jailed local kernels; owns what they share (uids, cgroup parent, jail mode, ZMQ context)."""

    name = "local"
    shared = False

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.instance = instance_id(config.data_dir)
        self.root = config.data_dir / "sandboxes"
        # ipc socket paths must stay under ~100 bytes, so they live in a short dir, not the data dir.
        self.run_root = config.run_dir / f"executor-{self.instance}"
        self.is_root = os.geteuid() == 0
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        self.prlimit = shutil.which("prlimit")
        self.sh = shutil.which("sh") or "/bin/sh"
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
        if not self.prlimit and self.jail != "none":
            raise SandboxError(
                "prlimit (util-linux) is not installed, so sandbox limits cannot be set; install util-linux"
            )
        if self.jail == "bwrap-userns" and not _userns_counts_nproc():
            raise SandboxError(
                f"Linux {platform.release()} counts RLIMIT_NPROC across all of the service user's processes, so "
                "an unprivileged service cannot bound a sandbox's processes: run the service as root (or in "
                "Docker with EXECUTOR_BACKEND=docker), or use Linux 5.14 or newer"
            )
        self.cgroups = CgroupManager(self.instance, enabled=config.use_cgroups)
        self.uids = UidPool(config.uid_lock_dir or config.run_dir / "executor-uids", config.uid_base, config.uid_count)
        self.python_base, self.venv = _python_layout()
        self.cache_dir = config.cache_dir or config.data_dir / "cache"
        self.tmpfs = WorkDirTmpfs(config.work_dir_size_mb)
        self.context: zmq.asyncio.Context | None = None
        self.sandboxes: Registry[KernelSandbox] = Registry(self.root)
        self._live = self.sandboxes.live
        self._layer_target: LayerTarget | None = None
        self._check_layout()

    def _check_layout(self) -> None:
        # The base prefix is bound at its own path (the venv's python links to it by absolute path), so it
        # must not lie where the jail mounts something else.
        base = str(self.python_base) + "/"
        if self.jail != "none" and any(base.startswith(x + "/") for x in ("/tmp", JAIL_WORK, "/run", "/proc", "/dev")):
            raise SandboxError(f"the Python at {self.python_base} lies under a path the jail replaces; move it")

    def describe(self) -> dict[str, Any]:
        """What /readyz shows: the jail in force and which limits are really enforced."""
        if self.cgroups.available:
            pids = f"cgroup ({self.cgroups.reason})"
        elif self.jail == "bwrap-userns":
            pids = "RLIMIT_NPROC per user namespace"
        else:
            pids = "RLIMIT_NPROC per sandbox uid" if self.is_root else "RLIMIT_NPROC (shared with the service user)"
        return {
            "backend": self.name,
            "jail": self.jail,
            "uid_isolation": self.is_root,
            "cgroups": self.cgroups.reason if self.cgroups.available else f"off ({self.cgroups.reason})",
            "pids": pids,
            "network": "none" if self.jail != "none" else "host (unjailed!)",
            "work_dir": self.tmpfs.describe("; each file is capped by RLIMIT_FSIZE"),
            "live_sandboxes": len(self._live),
        }

    def prepare(self, keep: Collection[str] = ()) -> dict[str, int]:
        """Create the dirs, remove orphans of a previous run, warm the matplotlib font cache."""
        self.sandboxes.keep(keep)
        reaped = self.reap_orphans()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.run_root.mkdir(mode=0o711, exist_ok=True)
        st = os.lstat(self.run_root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise SandboxError(f"{self.run_root} is not a directory owned by the service; remove it")
        os.chmod(self.run_root, 0o711)
        if self.is_root:
            self.uids.prepare()
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
        done = subprocess.run(
            [sys.executable, "-c", "import matplotlib.font_manager"],
            env=env,
            check=False,
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            log.warning("could not build the matplotlib font cache: %s", done.stderr.decode(errors="replace")[-500:])
        os.chmod(self.cache_dir, 0o755)
        os.chmod(target, 0o755)
        for f in target.iterdir():
            os.chmod(f, 0o644)

    def reap_orphans(self) -> dict[str, int]:
        """Kill every process and remove every cgroup, socket dir and work dir left by an earlier run
        (the work dirs of kept sandboxes stay)."""
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
                    if base == self.root and entry.name in self.sandboxes.kept:
                        continue
                    unmount_under(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                    dirs += 1
        return {"processes": killed, "cgroups": cgroups, "dirs": dirs}

    def workdir_of(self, sandbox_id: str) -> Path | None:
        return self.sandboxes.workdir_of(sandbox_id)

    async def discard(self, sandbox_id: str) -> None:
        await self.sandboxes.discard(sandbox_id)

    def shutdown(self) -> None:
        self.sandboxes.kept.clear()
        self.reap_orphans()
        self.cgroups.close()
        self.uids.close()
        shutil.rmtree(self.run_root, ignore_errors=True)

    async def start(self, keep: Collection[str] = ()) -> dict[str, int]:
        self.context = kernel_context(self.config.max_message_bytes)
        return await asyncio.to_thread(self.prepare, keep)

    async def reap(self) -> dict[str, int]:
        # Local kernels die with their process group and are tracked by pid; only stray cgroups can remain.
        return {}

    async def stop(self) -> None:
        for sandbox in list(self._live.values()):
            await sandbox.close()
        await self.sandboxes.drain()
        await asyncio.to_thread(self.shutdown)
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None

    async def layer_target(self) -> LayerTarget:
        """Kernels run the service's own interpreter."""
        if self._layer_target is None:
            self._layer_target = native_target()
        return self._layer_target

    async def create(
        self,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        layers: Sequence[Path] = (),
    ) -> KernelSandbox:
        """Start a new jailed kernel; returns once it is ready to execute. ``layers`` are bound read-only at
        ``/opt/executor/layers/<n>`` (unjailed: used in place) and put on ``PYTHONPATH`` after the runtime."""
        mounts = layer_mounts(layers)
        sandbox_id = secrets.token_hex(6)
        sandbox = KernelSandbox(
            sandbox_id,
            limits,
            LocalProcess(self, sandbox_id, limits, dict(env or {}), mounts),
            start_timeout_s=self.config.start_timeout_s,
            context=self.context,
            max_message_bytes=self.config.max_message_bytes,
            on_closed=self.sandboxes.track,
        )
        self._live[sandbox_id] = sandbox
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox


class LocalProcess:
    """The provisioner of one jailed ipykernel (see the module docstring for the jail)."""

    def __init__(
        self,
        backend: LocalBackend,
        sandbox_id: str,
        limits: Limits,
        env: dict[str, str],
        layers: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.limits = limits
        self.env = env
        self.layers = list(layers)  # (host dir, path in the jail)
        self.jail = backend.jail
        d = backend.root / sandbox_id
        self.paths = KernelPaths(dir=d, rundir=backend.run_root / sandbox_id, workdir=d / "work")
        self.uid = -1
        self.cgroup: Cgroup | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._launches = 0
        self._mounted = False
        self._stderr_tail = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def kernel_ip(self) -> str | None:
        return f"{JAIL_RUN}/k" if self.jail != "none" else None

    @property
    def file_owner(self) -> int | None:
        return self.uid if self.backend.is_root else None

    @property
    def ref(self) -> str | None:
        return None if self.proc is None else f"pid {self.proc.pid}"

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)

    def _prepare_dirs(self) -> None:
        b = self.backend
        self.uid = b.uids.take() if b.is_root else os.geteuid()
        self._mounted = self.paths.create(b.tmpfs, tmpfs_uid=self.uid, owner=self.uid if b.is_root else None)

    async def launch(self) -> None:
        b = self.backend
        self._launches += 1
        if b.cgroups.available:
            # A new cgroup per kernel: the old one's OOM counter would blame the new kernel for the old one's death.
            name = f"{self.id}.{self._launches}"
            self.cgroup = await asyncio.to_thread(
                b.cgroups.create, name, memory_mb=self.limits.memory_mb, pids=self.limits.pids, cpus=self.limits.cpus
            )
        argv, env = self._command()
        self._stderr_tail.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            cwd=str(self.paths.workdir),
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(self.proc))

    def _limits_prefix(self) -> list[str]:
        """setpriv (die with the service) -> sh (join the cgroups) -> prlimit: the chain before the jail."""
        b = self.backend
        mb = 1024 * 1024
        fsize = self.limits.file_size_mb * mb
        nofile = self.limits.open_files
        argv: list[str] = []
        if b.setpriv:
            argv += [b.setpriv, "--pdeathsig", "KILL", "--"]
        if self.cgroup is not None:
            procs = [str(d / "cgroup.procs") for d in self.cgroup.dirs]
            argv += [b.sh, "-c", _JOIN_CGROUPS, "sh", str(len(procs)), *procs]
        if not b.prlimit:  # only with EXECUTOR_ALLOW_UNJAILED on a host without util-linux: no limits at all
            return argv
        argv += [b.prlimit, "--core=0", f"--fsize={fsize}", f"--nofile={nofile}"]
        if self.cgroup is None:
            # Backstops where no cgroup enforces memory and pids. NPROC counts per uid (root: one uid per
            # sandbox) or per user namespace (bwrap-userns: one namespace per sandbox).
            if b.is_root or self.jail == "bwrap-userns":
                argv.append(f"--nproc={self.limits.pids}")
            mem = (self.limits.memory_mb + 1024) * mb
            argv.append(f"--as={mem}")
        return [*argv, "--"]

    def _kernel_env(self) -> dict[str, str]:
        threads = str(max(1, math.ceil(self.limits.cpus)))
        env = dict(self.env)
        jailed = self.jail != "none"
        d = self.paths.dir
        env.update(
            {
                "HOME": JAIL_WORK if jailed else str(self.paths.workdir),
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "TMPDIR": "/tmp",
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "MPLCONFIGDIR": "/tmp/matplotlib" if jailed else str(d / "mpl"),
                "IPYTHONDIR": "/tmp/ipython" if jailed else str(d / "ipython"),
                "JUPYTER_RUNTIME_DIR": "/tmp/jupyter" if jailed else str(d / "jupyter"),
                "PYTHONPATH": os.pathsep.join(
                    [JAIL_LIB, *(inside for _, inside in self.layers), PIP_TARGET]
                    if jailed
                    else [str(RUNTIME_DIR.parent), *(str(host) for host, _ in self.layers)]
                ),
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
        if jailed:
            # Its own net namespace (loopback only): every outbound byte goes through the service's proxy.
            env.update(egress_env(JAIL_RUN))
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
            f"{JAIL_RUN}/kernel.json" if jailed else str(self.paths.rundir / "kernel.json"),
            "sandbox_runtime" if jailed else "sandboxes.runtime",
        )
        drop = [
            b.setpriv or "setpriv",
            "--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]  # fmt: skip
        prefix = self._limits_prefix()
        if not jailed:
            argv = prefix + (drop if b.is_root and b.setpriv else []) + kernel
            return argv, {**env, "PATH": os.environ.get("PATH", env["PATH"])}

        argv = [*prefix, b.bwrap or "bwrap"]
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
        for host, inside in self.layers:
            argv += [*_dirs_for(inside), "--ro-bind", str(host), inside]
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
            str(self.paths.workdir),
            JAIL_WORK,
            *_dirs_for(JAIL_RUN),
            "--bind",
            str(self.paths.rundir),
            JAIL_RUN,
        ]
        argv += ["--chdir", JAIL_WORK, "--clearenv"]
        for k, v in env.items():
            argv += ["--setenv", k, v]
        argv += ["--"]
        if b.is_root:
            argv += drop
        argv += kernel
        # The chain before the kernel gets only the marker, so a crashed service's orphans can still be found.
        return argv, {MARKER_ENV: env[MARKER_ENV], "PATH": "/usr/bin:/bin"}

    def _etc_file(self, name: str) -> Path:
        path = self.paths.dir / name
        if not path.exists():
            if name == "passwd":
                text = f"root:x:0:0::/nonexistent:/usr/sbin/nologin\nsandbox:x:{self.uid}:{self.uid}::/work:/bin/sh\n"
            else:
                text = f"root:x:0:\nsandbox:x:{self.uid}:\n"
            path.write_text(text)
            os.chmod(path, 0o644)
        return path

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            self._stderr_tail += chunk
            del self._stderr_tail[:-4096]

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def settle(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.5)

    def exit_reason(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return None
        code = self.proc.returncode
        if self.cgroup is not None and self.cgroup.oom_killed():
            return f"the kernel ran out of memory (limit {self.limits.memory_mb} MiB) and was killed"
        if code < 0 or code > 128:
            signum = -code if code < 0 else code - 128
            with contextlib.suppress(ValueError):
                return f"the kernel was killed by {signal.Signals(signum).name}"
        return exit_status_reason(code)

    def diagnostics(self) -> str:
        return "\n".join(self._stderr_tail.decode(errors="replace").strip().splitlines()[-5:])

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            # The whole process group: unjailed kernels have no pid namespace to take their children down.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def cleanup(self, *, restart: bool) -> None:
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
            self._stderr_task = None
        cgroup, self.cgroup = self.cgroup, None
        await asyncio.to_thread(self._release, cgroup, restart)

    def _release(self, cgroup: Cgroup | None, restart: bool) -> None:
        if cgroup is not None:
            cgroup.remove()
        if restart:
            return
        if self._mounted:
            unmount(self.paths.workdir)
        shutil.rmtree(self.paths.rundir, ignore_errors=True)
        shutil.rmtree(self.paths.dir, ignore_errors=True)
        if self.uid >= 0 and self.backend.is_root:
            self.backend.uids.give(self.uid)
