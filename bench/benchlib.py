"""Shared parts of the bench scripts: start the service (and a stock Jupyter server) as subprocesses, talk to
them over HTTP only, take percentiles, read process memory from /proc.

Nothing here imports ``executor`` or ``sandboxes``: the service is measured from outside, through its HTTP API,
so these scripts keep working while its insides change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

KEY = "bench-key"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
PEER_VENV = Path(os.environ.get("BENCH_PEER_VENV", "/tmp/bench-peer-venv"))


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of samples; NaN when there are none."""
    if not samples:
        return float("nan")
    if q == 50:
        return statistics.median(samples)
    xs = sorted(samples)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def p50(samples: Sequence[float]) -> float:
    return pct(samples, 50)


def fmt_ms(seconds: float) -> str:
    return "     -" if seconds != seconds else f"{seconds * 1000:8.1f}"


def ratio(a: float, b: float) -> str:
    return "    -" if a != a or b != b or b == 0 else f"{a / b:5.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a plain aligned table (first column left, the rest right)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)))


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process (once, before anything is measured) with its output in a log file."""
    with open(log, "wb") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (numbers are noisy; compare ratios)"


# ---------------------------------------------------------------------------------------------- /proc readers


def proc_status(pid: int) -> dict[str, int]:
    """The kB (and count) fields of /proc/<pid>/status: VmRSS, VmHWM, Threads, ..."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0])
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (shared pages divided among their users); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def instance_of(data_dir: Path) -> str:
    """The name the service gives everything it starts (sandboxes.base.instance_id of its resolved data dir)."""
    return hashlib.sha256(str(data_dir.expanduser().resolve()).encode()).hexdigest()[:8]


def local_sandboxes(instance: str) -> dict[str, list[int]]:
    """Processes of the local backend's sandboxes, by sandbox: those whose environment holds
    ``EXECUTOR_SANDBOX=<instance>:<sandbox id>`` (the marker every sandbox process carries)."""
    marker = f"EXECUTOR_SANDBOX={instance}:".encode()
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(marker):
                found.setdefault(var[len(marker) :].decode(errors="replace"), []).append(int(entry.name))
                break
    return found


def docker_sandboxes(instance: str) -> dict[str, tuple[list[int], int | None]]:
    """Host pids of each container of the instance (``docker top``), and its containerd shim's pid."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=executor.instance={instance}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found: dict[str, tuple[list[int], int | None]] = {}
    for cid in ids:
        top = subprocess.run(["docker", "top", cid, "-eo", "pid"], capture_output=True, text=True)
        pids = [int(x) for x in top.stdout.split()[1:] if x.isdigit()]
        shim: int | None = None
        if pids:
            # The shim is the parent of the container's first process; it lives outside the container's cgroup.
            try:
                stat = Path(f"/proc/{min(pids)}/stat").read_text()
                shim = int(stat.rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                shim = None
        found[cid[:12]] = (pids, shim)
    return found


class Sampler:
    """Samples a process's VmRSS and thread count every ``period`` seconds in the background."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.max_threads = 0
        self.max_rss_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            st = proc_status(self.pid)
            self.max_threads = max(self.max_threads, st.get("Threads", 0))
            self.max_rss_kib = max(self.max_rss_kib, st.get("VmRSS", 0))
            await asyncio.sleep(self.period)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


# ---------------------------------------------------------------------------------------------- the service


@dataclass
class Service:
    """The service as a subprocess (``python -m executor serve``, as in production), on a free loopback port."""

    data_dir: Path
    backend: str = "local"
    pool_size: int = 2
    max_sessions: int = 50
    extra_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def instance(self) -> str:
        return instance_of(self.data_dir)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        kw.setdefault("timeout", 120)
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, **kw)

    async def start(self) -> None:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "EXECUTOR_API_KEYS": KEY,
            "EXECUTOR_DATA_DIR": str(self.data_dir),
            "EXECUTOR_CACHE_DIR": str(self.data_dir.parent / "cache"),
            "EXECUTOR_PORT": str(self.port),
            "EXECUTOR_BACKEND": self.backend,
            "EXECUTOR_POOL_SIZE": str(self.pool_size),
            "EXECUTOR_MAX_SESSIONS": str(self.max_sessions),
            "EXECUTOR_MAX_SESSIONS_PER_PRINCIPAL": str(self.max_sessions),
            "EXECUTOR_MAX_SESSIONS_PER_KEY": str(self.max_sessions),
            **self.extra_env,
        }
        self.log_path = self.data_dir.parent / f"service-{self.port}.log"
        self.proc = spawn([sys.executable, "-m", "executor", "serve"], env, self.log_path)
        async with self.client() as c:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the service exited ({self.proc.returncode}); see {self.log_path}")
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the service did not get ready; see {self.log_path}")
        await self.wait_pool()

    async def pooled(self, c: httpx.AsyncClient) -> int | None:
        """Ready sandboxes in the pool of this backend, as /readyz reports them (None if it does not say)."""
        try:
            body = (await c.get("/readyz")).json()
            n = body.get("sessions", {}).get("pooled", {}).get(self.backend)
            return n if isinstance(n, int) else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    async def wait_pool(self, timeout: float = 120) -> None:
        """Until the pool is full again (at least pool_size ready); a fixed 2 s if /readyz does not say."""
        if self.pool_size == 0:
            return
        async with self.client() as c:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                n = await self.pooled(c)
                if n is None:
                    await asyncio.sleep(2)
                    return
                if n >= self.pool_size:
                    return
                await asyncio.sleep(0.05)

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)


async def one_shot(c: httpx.AsyncClient, code: str) -> tuple[float, dict[str, Any]]:
    """``POST /api/v1/execute``: seconds until the whole answer is in, and the result."""
    t = time.perf_counter()
    r = await c.post("/api/v1/execute", json={"code": code})
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"one-shot answered {r.status_code}: {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return elapsed, body


def has_image(result: Mapping[str, Any]) -> bool:
    return any(str(o.get("mime_type", "")).startswith("image/") for o in result.get("outputs", []))


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Parse a text/event-stream body into (event, data) pairs as they arrive."""
    event, data = "message", list[str]()
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


# ---------------------------------------------------------------------------------------------- the peer


@dataclass
class JupyterPeer:
    """A stock ``jupyter server`` from a scratch venv (so the service's venv is not changed), on loopback with a
    token. One run = ``POST /api/kernels``, execute over the kernel's websocket until the reply and idle,
    ``DELETE /api/kernels/{id}``: what a chat backend does with it."""

    root: Path
    venv: Path = PEER_VENV
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available(venv: Path = PEER_VENV) -> str | None:
        """None when the peer can run, else how to make it runnable."""
        if (venv / "bin" / "jupyter-server").exists():
            return None
        return (
            f"no jupyter-server in {venv}; make it with: python3 -m venv {venv} && "
            f"{venv}/bin/pip install jupyter-server ipykernel matplotlib"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(self.root / "config"),
            "JUPYTER_DATA_DIR": str(self.root / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "IPYTHONDIR": str(self.root / "ipython"),
            "MPLCONFIGDIR": str(self.root / "mpl"),
        }
        argv = [
            str(self.venv / "bin" / "jupyter-server"),
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root}",
            "--allow-root",
        ]
        self.proc = spawn(argv, env, self.root / "server.log")
        async with self.client() as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter server exited; see {self.root / 'server.log'}")
                try:
                    if (await c.get("/api/status")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"jupyter server did not start; see {self.root / 'server.log'}")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=120)

    async def run(self, c: httpx.AsyncClient, code: str) -> tuple[float, dict[str, Any]]:
        """One chat-backend run; seconds for the whole of it, and what came back (stdout, image)."""
        return await jupyter_run(c, f"ws://127.0.0.1:{self.port}", {"Authorization": f"token {self.token}"}, code)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)


async def jupyter_run(
    c: httpx.AsyncClient, ws_base: str, headers: dict[str, str], code: str
) -> tuple[float, dict[str, Any]]:
    """One chat-backend run against a Jupyter server (``c``'s base URL, websocket at ``ws_base``):
    ``POST /api/kernels``, execute over the kernel's websocket until the reply and idle, ``DELETE``."""
    import websockets

    t = time.perf_counter()
    r = await c.post("/api/kernels", json={"name": "python3"})
    r.raise_for_status()
    kid = r.json()["id"]
    out: dict[str, Any] = {"stdout": "", "image": False}
    try:
        ws_url = f"{ws_base}/api/kernels/{kid}/channels"
        async with websockets.connect(ws_url, additional_headers=headers, max_size=None) as ws:
            msg_id = uuid.uuid4().hex
            await ws.send(json.dumps(execute_request(msg_id, code)))
            idle = reply = False
            while not (idle and reply):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg.get("msg_type") or msg["header"]["msg_type"]
                content = msg.get("content", {})
                if kind == "execute_reply":
                    reply = True
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
                elif kind == "stream":
                    out["stdout"] += content.get("text", "")
                elif kind in ("display_data", "execute_result") and "image/png" in content.get("data", {}):
                    out["image"] = True
    finally:
        await c.delete(f"/api/kernels/{kid}")
    return time.perf_counter() - t, out


def execute_request(msg_id: str, code: str) -> dict[str, Any]:
    """A Jupyter messaging 5.3 execute_request, as JSON over jupyter_server's (legacy, JSON) websocket."""
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "bench",
            "session": uuid.uuid4().hex,
            "date": "",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
