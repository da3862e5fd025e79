"""A Jupyter Kernel Gateway on loopback with local ipykernel kernels: the remote backend's stand-in cluster."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Gateway:
    url: str
    token: str
    work_dir: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    log: Path = field(repr=False)

    def stop(self) -> None:
        """Stop the gateway; it shuts its kernels down first (SIGTERM), SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(tmp_dir: Path) -> Gateway:
    """Kernel Gateway on a free loopback port, token auth, kernels listed; cwd (and kernels' cwd) ``tmp_dir``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    work = tmp_dir / "kernels"
    work.mkdir(exist_ok=True)
    token = secrets.token_hex(16)
    port = _free_port()
    log = tmp_dir / "gateway.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_dir / "runtime")}
    env.pop("KG_AUTH_TOKEN", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel_gateway",
                "--ip=127.0.0.1",
                f"--port={port}",
                "--port_retries=0",
                f"--KernelGatewayApp.auth_token={token}",
                "--JupyterWebsocketPersonality.list_kernels=True",
                "--KernelGatewayApp.default_kernel_name=python3",
                # jupyter_server drops iopub output past 1 MB/s silently; the service caps output itself.
                "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
                "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
            ],
            cwd=tmp_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(url=f"http://127.0.0.1:{port}", token=token, work_dir=work, proc=proc, log=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the kernel gateway exited: {log.read_text()}")
        try:
            if httpx.get(f"{gw.url}/api", headers=_auth(gw), timeout=1).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError(f"the kernel gateway did not start: {log.read_text()}")


def _auth(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"token {gw.token}"}


def gateway_kernels(gw: Gateway) -> list[str]:
    """Ids of the kernels running on the gateway now."""
    r = httpx.get(f"{gw.url}/api/kernels", headers=_auth(gw), timeout=10)
    r.raise_for_status()
    return [k["id"] for k in r.json()]


def delete_kernel(gw: Gateway, kernel_id: str) -> int:
    """What a gateway's culler does to an idle kernel."""
    return httpx.delete(f"{gw.url}/api/kernels/{kernel_id}", headers=_auth(gw), timeout=30).status_code
