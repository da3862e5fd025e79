"""Shared fixtures: a real service on loopback (uvicorn in-process, real kernels) and an HTTP client for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from executor.app import create_app
from executor.settings import Settings
from sandboxes.base import instance_id
from sandboxes.local import MARKER_ENV

KEY_A = "test-key-a"
KEY_B = "test-key-b"
DOCKER_IMAGE = "executor-sandbox:latest"
# Every service instance the tests started: what the end-of-run leftover check looks for.
INSTANCES: set[str] = set()
DOCKER_INSTANCES: set[str] = set()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One matplotlib font cache for the whole run: building it takes a second or two.
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def docker_problem(image: str | None = DOCKER_IMAGE) -> str | None:
    """Why Docker tests cannot run here, or None when an engine answers and the sandbox image (unless None) is
    present."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        if image is not None:
            client.images.get(image)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_docker(image: str | None = DOCKER_IMAGE) -> None:
    """Skip outside CI, fail in CI (CI=true): there, every Docker test must run."""
    problem = docker_problem(image)
    if problem is None:
        return
    message = f"Docker is not usable ({problem}); run scripts/docker-engine and images/build"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def backend_name() -> str:
    """The backend a test's service uses by default; the parametrized suites override this fixture."""
    return "local"


BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture
def settings(data_dir: Path, cache_dir: Path, backend_name: str) -> Settings:
    if backend_name == "docker":
        require_docker()
        DOCKER_INSTANCES.add(instance_id(data_dir.resolve()))
    INSTANCES.add(instance_id(data_dir.resolve()))
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=[KEY_A, KEY_B],
        data_dir=data_dir,
        cache_dir=cache_dir,
        backend=backend_name,
        pool_size=0,
        cull_interval_s=0.5,
        default_timeout_s=30,
    )


@dataclass
class Service:
    url: str
    settings: Settings
    app: object

    @property
    def instance(self) -> str:
        return instance_id(self.settings.data_dir)

    def client(self, key: str | None = KEY_A) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)


async def start_service(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], Service]:
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # pytest owns the signals
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the service stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, Service(url=f"http://127.0.0.1:{port}", settings=settings, app=app)


async def stop_service(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    """The service on a free loopback port; stopped (every kernel and work dir gone) after the test."""
    server, task, svc = await start_service(settings)
    try:
        yield svc
    finally:
        await stop_service(server, task)
        assert sandbox_processes(svc.instance) == [], "kernel processes left after shutdown"
        assert not list((settings.data_dir / "sandboxes").glob("*")), "work dirs left after shutdown"
        assert not list((settings.data_dir / "docker").glob("*")), "container work dirs left after shutdown"
        assert labeled_containers(svc.instance) == [], "containers left after shutdown"
        assert instance_cgroups(svc.instance) == [], "cgroups left after shutdown"


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with service.client() as c:
        yield c


@pytest.fixture
async def session(client: httpx.AsyncClient) -> AsyncIterator[dict]:
    r = await client.post("/api/v1/sessions", json={})
    assert r.status_code == 201, r.text
    body = r.json()
    yield body
    await client.delete(f"/api/v1/sessions/{body['id']}")


async def run(client: httpx.AsyncClient, session_id: str, code: str, **extra: object) -> dict:
    r = await client.post(f"/api/v1/sessions/{session_id}/executions", json={"code": code, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def fork_bomb(tries: int) -> str:
    """A cell that forks sleepers until the pids limit says no; prints ``stopped <errno>``, returns the count."""
    return (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        f"    for _ in range({tries}):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
        "n"
    )


MEMORY_BOMB = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))"


def sandbox_processes(instance: str) -> list[int]:
    """Pids of every process a sandbox of this service instance started (found by their marker env)."""
    marker = f"{MARKER_ENV}={instance}:".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                status = (proc / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def instance_cgroups(instance: str) -> list[str]:
    """cgroup dirs of this service instance (any controller, v1 or v2)."""
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/executor-{instance}")] + [
        str(p) for p in Path("/sys/fs/cgroup").glob(f"executor-{instance}")
    ]


def labeled_containers(instance: str) -> list[str]:
    """Containers (running or not) carrying this service instance's label."""
    if instance not in DOCKER_INSTANCES:
        return []
    import docker

    client = docker.from_env(timeout=10)
    return [c.id for c in client.containers.list(all=True, filters={"label": f"executor.instance={instance}"})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    """The service as a separate OS process (``executor serve``), for crash and signal tests."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


def serve_process(
    env: dict[str, str], port: int, log: Path, procs: list[subprocess.Popen[bytes]] | None = None
) -> ServiceProcess:
    """``executor serve`` with ``env``, once its /readyz answers on ``port`` (its output appended to ``log``)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "executor", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if procs is not None:
        procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return ServiceProcess(proc, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"service did not become ready: {log.read_text()}")


@pytest.fixture
def spawn_service(settings: Settings, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> ServiceProcess:
        port = free_port()
        env = {
            **os.environ,
            "EXECUTOR_API_KEYS": ",".join(settings.api_keys),
            "EXECUTOR_DATA_DIR": str(settings.data_dir),
            "EXECUTOR_CACHE_DIR": str(settings.cache_dir),
            "EXECUTOR_PORT": str(port),
            "EXECUTOR_POOL_SIZE": str(settings.pool_size),
            "EXECUTOR_BACKEND": settings.backend,
        }
        return serve_process(env, port, tmp_path / f"service-{len(procs)}.log", procs)

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers() -> Iterator[None]:
    """After the whole run: no process and no socket dir of any service instance the tests started."""
    yield
    leftovers = {i: sandbox_processes(i) for i in INSTANCES}
    assert not any(leftovers.values()), f"sandbox processes left after the test run: {leftovers}"
    dirs = [i for i in INSTANCES if Path(f"/tmp/executor-{i}").exists() or Path(f"/tmp/executor-{i}-d").exists()]
    assert not dirs, f"socket dirs left after the test run: {dirs}"
    cgroups = [c for i in INSTANCES for c in instance_cgroups(i)]
    assert not cgroups, f"cgroups left after the test run: {cgroups[:5]}"
    containers = {i: labeled_containers(i) for i in DOCKER_INSTANCES}
    assert not any(containers.values()), f"containers left after the test run: {containers}"


def require_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/test installs it)")
