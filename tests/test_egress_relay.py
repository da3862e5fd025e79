"""The sandbox side of egress: the runtime's relay (127.0.0.1:3128 -> <run dir>/egress.sock) and the env.

Unit tests drive ``sandboxes/runtime/relay.py`` in the test's loop against a host Unix server; the end-to-end
tests start a real kernel on each backend, bind a tiny fixed-answer "proxy" at ``sandbox.egress_socket`` (what
the service's proxy will do) and reach it from a cell through HTTP_PROXY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxes.base import EndEvent, ErrorEvent, Limits, StreamEvent
from sandboxes.egress import EGRESS_PORT, PIP_TARGET, SOCKET_NAME, egress_env
from sandboxes.kernel import KernelSandbox
from sandboxes.runtime import relay
from tests.conftest import (
    BACKENDS,
    DOCKER_IMAGE,
    DOCKER_INSTANCES,
    INSTANCES,
    require_bwrap,
    require_docker,
    sandbox_processes,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nfrom service"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FixedProxy:
    """The service's side, reduced: answers a plain request with ANSWER, a CONNECT with 200 then echoes."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head.split(b"\r\n", 1)[0])
            if head.startswith(b"CONNECT "):
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            else:
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def bind(self, path: Path, owner: int | None) -> None:
        self.server = await asyncio.start_unix_server(self.handle, path)
        # The sandbox uid must be able to connect (the service runs as root); nobody else may.
        os.chmod(path, 0o600 if owner is not None else 0o666)
        if owner is not None:
            os.chown(path, owner, owner)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def running_relay(socket_path: Path, *, max_connections: int = 64) -> AsyncIterator[int]:
    """The relay in this test's loop on a free loopback port; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    port = int(listener.getsockname()[1])
    task = asyncio.create_task(relay.Relay(listener, str(socket_path), max_connections=max_connections).serve())
    try:
        yield port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()


async def _exchange(port: int, payload: bytes, *, half_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    if half_close:
        writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


# -- the relay alone -------------------------------------------------------------------------------------


async def test_bytes_are_piped_both_ways_and_eof_is_passed_on(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    proxy = FixedProxy()
    await proxy.bind(path, None)
    try:
        async with running_relay(path) as port:
            assert await _exchange(port, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n") == ANSWER
            big = os.urandom(3 << 20)
            # CONNECT then a tunnel: 3 MiB up, echoed back whole, ended by the client's half close.
            echoed = await _exchange(port, b"CONNECT example.test:443 HTTP/1.1\r\n\r\n" + big)
            assert echoed == b"HTTP/1.1 200 Connection established\r\n\r\n" + big
        assert proxy.heads == [b"GET http://example.test/ HTTP/1.1", b"CONNECT example.test:443 HTTP/1.1"]
    finally:
        await proxy.aclose()


async def test_no_proxy_socket_answers_502_with_json(tmp_path: Path) -> None:
    async with running_relay(tmp_path / "absent.sock") as port:
        data = await _exchange(port, b"GET http://example.test/ HTTP/1.1\r\n\r\n", half_close=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ")
    assert json.loads(body)["error"] == "egress_unavailable"


async def test_connections_over_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    proxy = FixedProxy()
    await proxy.bind(path, None)
    try:
        async with running_relay(path, max_connections=1) as port:
            held_r, held_w = await asyncio.open_connection("127.0.0.1", port)
            held_w.write(b"CONNECT example.test:443 HTTP/1.1\r\n\r\n")
            assert await held_r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
            # The second connection is accepted and dropped: it reads nothing.
            with contextlib.suppress(ConnectionError):
                assert await _exchange(port, b"GET http://example.test/ HTTP/1.1\r\n\r\n") == b""
            held_w.close()
            await held_w.wait_closed()
            # Once the first is gone the slot is free again.
            data = b""
            for _ in range(100):
                with contextlib.suppress(ConnectionError):
                    data = await _exchange(port, b"GET http://example.test/ HTTP/1.1\r\n\r\n")
                if data:
                    break
                await asyncio.sleep(0.02)
            assert data == ANSWER
    finally:
        await proxy.aclose()


def test_start_binds_before_it_returns_and_raises_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            relay.start(str(tmp_path / SOCKET_NAME), taken.getsockname()[1])
    assert relay.STATUS.startswith("failed:")
    port = _free_port()
    relay.start(str(tmp_path / SOCKET_NAME), port)  # a daemon thread; it ends with the test process
    assert relay.STATUS == f"listening on 127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_the_env_names_the_socket_the_port_and_the_proxy() -> None:
    env = egress_env("/run/kernel")
    assert env["EXECUTOR_EGRESS_SOCKET"] == "/run/kernel/egress.sock"
    assert env["EXECUTOR_EGRESS_PORT"] == "3128"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        assert env[name] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert env["PIP_TARGET"] == PIP_TARGET and env["PIP_NO_CACHE_DIR"] == "1"


def test_only_a_jailed_local_kernel_gets_the_egress_env_and_socket(tmp_path: Path) -> None:
    from sandboxes.local import LocalBackend, LocalConfig, LocalProcess

    require_bwrap()
    backend = LocalBackend(LocalConfig(data_dir=tmp_path / "d", use_cgroups=False))
    jailed = LocalProcess(backend, "abc", Limits(), {"HTTP_PROXY": "http://evil:1"})
    env = jailed._kernel_env()
    assert {k: env[k] for k in egress_env("/run/kernel")} == egress_env("/run/kernel")
    assert env["PYTHONPATH"].split(":")[-1] == PIP_TARGET
    sandbox = KernelSandbox("abc", Limits(), jailed, start_timeout_s=1)
    assert sandbox.egress_socket == jailed.paths.rundir / SOCKET_NAME

    backend.jail = "none"
    unjailed = LocalProcess(backend, "def", Limits(), {})
    assert "EXECUTOR_EGRESS_SOCKET" not in unjailed._kernel_env() and "HTTP_PROXY" not in unjailed._kernel_env()
    assert KernelSandbox("def", Limits(), unjailed, start_timeout_s=1).egress_socket is None


# -- end to end, in real kernels ---------------------------------------------------------------------------


@dataclass
class Box:
    sandbox: KernelSandbox
    backend: Any


@pytest.fixture(params=BACKENDS)
async def box(request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path) -> AsyncIterator[Box]:
    """A started sandbox of each backend, with its backend (stopped after the test)."""
    from sandboxes.base import instance_id

    data_dir = (tmp_path / "data").resolve()
    instance = instance_id(data_dir)
    INSTANCES.add(instance)
    backend: Any
    if request.param == "docker":
        from sandboxes.docker import DockerBackend, DockerConfig

        image = os.environ.get("EXECUTOR_DOCKER_IMAGE", DOCKER_IMAGE)
        require_docker(image)
        DOCKER_INSTANCES.add(instance)
        backend = DockerBackend(DockerConfig(data_dir=data_dir, instance=instance, image=image))
    else:
        from sandboxes.local import LocalBackend, LocalConfig

        require_bwrap()
        backend = LocalBackend(LocalConfig(data_dir=data_dir, cache_dir=cache_dir))
    await backend.start()
    try:
        sandbox = await backend.create(Limits())
        try:
            yield Box(sandbox, backend)
        finally:
            await sandbox.close()
    finally:
        await backend.stop()


@pytest.fixture
def sandbox(box: Box) -> KernelSandbox:
    return box.sandbox


async def cell(sandbox: KernelSandbox, code: str) -> str:
    out: list[str] = []
    async for event in sandbox.execute(code, timeout=60):
        if isinstance(event, StreamEvent):
            out.append(event.text)
        elif isinstance(event, ErrorEvent):
            raise AssertionError(f"{event.name}: {event.value}\n" + "\n".join(event.traceback))
        elif isinstance(event, EndEvent):
            assert event.status == "ok", event
    return "".join(out)


PROBE = """
import json, os, socket, sys, urllib.error, urllib.request
out = {"env": {k: os.environ.get(k) for k in ("HTTP_PROXY", "https_proxy", "NO_PROXY", "EXECUTOR_EGRESS_SOCKET")}}
try:
    out["body"] = urllib.request.urlopen("http://example.test/", timeout=10).read().decode()
except urllib.error.HTTPError as e:
    out["status"], out["error"] = e.code, json.loads(e.read())["error"]
for name, addr in [("private", ("10.0.0.1", 80)), ("loopback", ("127.0.0.1", OTHER))]:
    try:
        socket.create_connection(addr, timeout=3).close()
        out[name] = "connected"
    except OSError as e:
        out[name] = type(e).__name__
out["ifaces"] = sorted(i[1] for i in socket.if_nameindex())
print(json.dumps(out))
"""


async def test_a_cell_reaches_the_service_only_through_the_relay(box: Box) -> None:
    sandbox = box.sandbox
    path = sandbox.egress_socket
    assert path is not None and path.name == SOCKET_NAME and path.parent.is_dir()
    other = next(p for p in iter(_free_port, None) if p != EGRESS_PORT)
    probe = PROBE.replace("OTHER", str(other))

    # Nothing bound yet: the relay answers 502 itself.
    before = json.loads(await cell(sandbox, probe))
    assert before["status"] == 502 and before["error"] == "egress_unavailable", before
    assert before["env"] == {
        "HTTP_PROXY": "http://127.0.0.1:3128",
        "https_proxy": "http://127.0.0.1:3128",
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "EXECUTOR_EGRESS_SOCKET": "/run/kernel/egress.sock",
    }

    proxy = FixedProxy()
    await proxy.bind(path, sandbox.file_owner)
    try:
        after = json.loads(await cell(sandbox, probe))
        assert after["body"] == "from service", after
        assert proxy.heads == [b"GET http://example.test/ HTTP/1.1"]
        # Loopback is up (the relay listens there), and it is the only interface: nothing else is reachable.
        assert after["ifaces"] == ["lo"], after
        assert after["private"] in ("OSError", "ConnectionRefusedError", "TimeoutError"), after
        assert after["private"] != "connected" and after["loopback"] == "ConnectionRefusedError", after
        # A CONNECT tunnel through the relay carries bytes both ways.
        echoed = await cell(
            sandbox,
            "import socket\n"
            "s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
            "s.sendall(b'CONNECT example.test:443 HTTP/1.1\\r\\n\\r\\nping'); s.shutdown(socket.SHUT_WR)\n"
            "data = b''\n"
            "while chunk := s.recv(65536): data += chunk\n"
            "print(data.decode().split('\\r\\n\\r\\n', 1)[1])\n",
        )
        assert echoed == "ping\n"
    finally:
        await proxy.aclose()
    rundir = path.parent
    await sandbox.close()
    await box.backend.sandboxes.drain()  # the teardown runs in the background
    # The socket file goes with the run dir, and the relay with the kernel process.
    assert not path.exists() and not rundir.exists()
    if sandbox.jail != "docker":
        assert sandbox_processes(box.backend.instance) == []


async def test_packages_installed_into_the_pip_target_import_without_a_restart(sandbox: KernelSandbox) -> None:
    out = await cell(
        sandbox,
        "import importlib, os, sys\n"
        "target = os.environ['PIP_TARGET']\n"
        "print(target, os.path.isdir(target), target in sys.path)\n"
        "open(os.path.join(target, 'late_pkg.py'), 'w').write('VALUE = 42\\n')\n"
        "importlib.invalidate_caches()\n"
        "import late_pkg\n"
        "print(late_pkg.VALUE)\n"
        "import importlib.util\n"
        "print(importlib.util.find_spec('pip') is not None)\n",
    )
    lines = out.split("\n")
    assert lines[0] == f"{PIP_TARGET} True True" and lines[1] == "42", out
    if sandbox.jail == "docker":
        assert lines[2] == "True", "the sandbox image keeps pip"
