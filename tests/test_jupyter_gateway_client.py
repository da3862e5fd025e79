"""A real, unmodified ``jupyter server --gateway-url=<the service>`` (jupyter_server's own gateway client, what
JupyterLab users run against a Kernel Gateway) starts kernels on the service and runs cells through it.

The test talks only to the jupyter server, as JupyterLab does: its REST API (``POST /api/kernels``, kernelspecs,
interrupt, restart, ``DELETE``) and its kernel websocket; the jupyter server forwards all of it to the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from executor.settings import Settings
from tests.conftest import KEY_A, Service, free_port, require_bwrap

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    require_bwrap()
    return settings


@dataclass
class JupyterServer:
    url: str
    token: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=60)

    def ws(self, kernel_id: str) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels?token={self.token}"


def _spawn(argv: list[str], env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
    with (root / "server.log").open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM: the jupyter server shuts its kernels down (on the service: DELETE) before it exits.
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
async def jupyter(service: Service, tmp_path: Path) -> AsyncIterator[JupyterServer]:
    """``jupyter server`` from the test venv, its kernels on the service (its config and runtime dirs in tmp)."""
    root = tmp_path / "jupyter"
    root.mkdir()
    token = uuid.uuid4().hex
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_", "JUPYTER_GATEWAY_"))},
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "IPYTHONDIR": str(root / "ipython"),
        # Forwarded by the gateway client in the kernel start body (it sends every KERNEL_* variable).
        "KERNEL_USERNAME": "jlab-user",
        "KERNEL_EXTRA_TEST": "forwarded",
    }
    argv = [
        sys.executable, "-m", "jupyter_server",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
        f"--gateway-url={service.url}", f"--GatewayClient.auth_token={KEY_A}",
        "--GatewayClient.request_timeout=60", "--GatewayClient.gateway_retry_max=0", "--allow-root",
    ]  # fmt: skip
    proc = _spawn(argv, env, root)
    server = JupyterServer(f"http://127.0.0.1:{port}", token)
    try:
        async with server.client() as c:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (root / "server.log").read_text()
                try:
                    if (await c.get("/api/status")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (root / "server.log").read_text()
                await asyncio.sleep(0.1)
        yield server
    finally:
        _stop(proc)
        print((root / "server.log").read_text()[-20000:])  # shown by pytest when the test fails


def _request(msg_type: str, content: dict[str, Any], channel: str = "shell") -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": msg_type, "username": "lab", "session": uuid.uuid4().hex,
              "date": "", "version": "5.3"}  # fmt: skip
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": channel}


async def _run(ws: websockets.ClientConnection, code: str) -> list[dict[str, Any]]:
    """Execute one cell as JupyterLab does; what answers it, up to both its reply and its idle status."""
    request = _request("execute_request", {"code": code, "silent": False, "store_history": True,
                       "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})  # fmt: skip
    await ws.send(json.dumps(request))
    seen: list[dict[str, Any]] = []
    reply = idle = False
    while not (reply and idle):
        msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
            continue
        seen.append(msg)
        reply = reply or msg["msg_type"] == "execute_reply"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return seen


def _stdout(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


async def _service_kernels(service: Service) -> list[str]:
    async with service.client() as c:
        r = await c.get("/api/kernels")
        assert r.status_code == 200, r.text
        return [k["id"] for k in r.json()]


async def test_jupyter_server_runs_a_cell_on_the_service(service: Service, jupyter: JupyterServer) -> None:
    async with jupyter.client() as c:
        specs = (await c.get("/api/kernelspecs")).json()
        assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]
        r = await c.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kid = r.json()["id"]
        assert await _service_kernels(service) == [kid]  # the kernel is the service's, under the same id
        assert (await c.get(f"/api/kernels/{kid}")).json()["execution_state"] in ("idle", "starting")
        # JupyterLab asks for the binary v1 protocol; the gateway connection holds it to the classic JSON one.
        async with websockets.connect(jupyter.ws(kid), subprotocols=[V1_PROTOCOL]) as ws:
            assert ws.subprotocol is None
            got = await _run(ws, "import os\nx = 6 * 7\nprint(os.environ.get('EXECUTOR_SANDBOX', '')[:0] + 'hi')\nx")
            assert _stdout(got) == "hi\n"
            result = next(m for m in got if m["msg_type"] == "execute_result")
            assert result["content"]["data"]["text/plain"] == "42"
            reply = next(m for m in got if m["msg_type"] == "execute_reply")
            assert reply["content"]["status"] == "ok"
        r = await c.delete(f"/api/kernels/{kid}")
        assert r.status_code == 204, r.text
        assert (await c.get("/api/kernels")).json() == []
    assert await _service_kernels(service) == []


async def test_interrupt_restart_and_errors_through_jupyter_server(service: Service, jupyter: JupyterServer) -> None:
    async with jupyter.client() as c:
        kid = (await c.post("/api/kernels", json={"name": "python3"})).json()["id"]
        try:
            async with websockets.connect(jupyter.ws(kid)) as ws:
                got = await _run(ws, "y = 1\n1 / 0")
                error = next(m for m in got if m["msg_type"] == "error")
                assert error["content"]["ename"] == "ZeroDivisionError"
                # A long cell, interrupted through the jupyter server's REST API.
                request = _request("execute_request", {"code": "import time\ntime.sleep(60)", "silent": False})
                await ws.send(json.dumps(request))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
                        break
                assert (await c.post(f"/api/kernels/{kid}/interrupt")).status_code == 204
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if msg["msg_type"] == "execute_reply":
                        assert msg["content"]["status"] in ("aborted", "error")
                        break
                assert _stdout(await _run(ws, "print(y)")) == "1\n"  # the kernel and its state stayed
            r = await c.post(f"/api/kernels/{kid}/restart")
            assert r.status_code == 200, r.text
            async with websockets.connect(jupyter.ws(kid)) as ws:
                got = await _run(ws, "y")
                assert any(m["msg_type"] == "error" and m["content"]["ename"] == "NameError" for m in got)
            # A kernel the service does not have: the jupyter server reports the service's 404.
            assert (await c.get(f"/api/kernels/{uuid.uuid4()}")).status_code == 404
        finally:
            assert (await c.delete(f"/api/kernels/{kid}")).status_code == 204
    assert await _service_kernels(service) == []
