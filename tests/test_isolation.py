"""What the local jail really enforces, checked from inside a kernel."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from executor.settings import Settings
from tests.conftest import MEMORY_BOMB, Service, fork_bomb, run


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A file-size limit well under the memory limit: the work dir is a tmpfs whose pages count as memory.
    settings.max_file_size_mb = 32
    return settings


@pytest.fixture
def outside_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("top secret")
    secret.chmod(0o644)  # readable by anyone on the host: only the jail may stop the read
    return secret


async def test_a_socket_connect_fails(client: httpx.AsyncClient, session: dict) -> None:
    code = (
        "import socket\n"
        "for addr in [('127.0.0.1', 22), ('1.1.1.1', 80)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=2)\n"
        "        print('connected', addr)\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    r = await run(client, session["id"], code)
    assert "connected" not in r["stdout"]
    assert r["stdout"].count("refused") == 2
    r = await run(client, session["id"], "import socket\nsorted(i[1] for i in socket.if_nameindex())")
    assert r["result"] == "['lo']"


async def test_a_cell_cannot_read_outside_its_jail(
    client: httpx.AsyncClient, session: dict, outside_secret: Path, service: Service
) -> None:
    for path in (outside_secret, service.settings.data_dir / "executor.db", Path("/etc/shadow"), Path("/root")):
        r = await run(client, session["id"], f"open({str(path)!r}).read()")
        assert r["status"] == "error", path
        assert r["error"]["name"] in ("FileNotFoundError", "PermissionError", "IsADirectoryError"), r["error"]
    r = await run(client, session["id"], "import os\nsorted(os.listdir('/'))")
    visible = eval(r["result"])
    assert "home" not in visible and "root" in visible  # /root only holds the bound interpreter


async def test_kernel_runs_unprivileged(client: httpx.AsyncClient, session: dict) -> None:
    if os.geteuid() != 0:
        pytest.skip("uid isolation needs the service to run as root")
    code = (
        "import os\n"
        "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "(os.getuid(), st['CapEff'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip())"
    )
    r = await run(client, session["id"], code)
    uid, cap_eff, cap_bnd, nnp = eval(r["result"])
    assert uid >= 61000
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0 and nnp == "1"
    r = await run(client, session["id"], "open('/usr/bin/x', 'w')")
    assert r["error"]["name"] in ("PermissionError", "OSError")


async def test_sessions_get_distinct_uids_and_cannot_see_each_other(client: httpx.AsyncClient) -> None:
    a = (await client.post("/api/v1/sessions", json={})).json()["id"]
    b = (await client.post("/api/v1/sessions", json={})).json()["id"]
    try:
        ra = await run(client, a, "import os\nopen('mine.txt','w').write('a')\n(os.getuid(), len(os.listdir('/proc')))")
        rb = await run(client, b, "import os\n(os.getuid(), os.listdir('/work'))")
        assert eval(ra["result"])[0] != eval(rb["result"])[0]
        assert eval(rb["result"])[1] == []
    finally:
        await client.delete(f"/api/v1/sessions/{a}")
        await client.delete(f"/api/v1/sessions/{b}")


async def test_file_size_limit(service: Service, client: httpx.AsyncClient, session: dict) -> None:
    mb = service.settings.max_file_size_mb
    code = f"f = open('big.bin', 'wb')\nf.write(b'0' * ({mb} * 1024 * 1024 + 1))\nf.flush()"
    r = await run(client, session["id"], code)
    assert r["status"] == "error" and "File too large" in r["error"]["value"]


async def test_memory_bomb_kills_only_its_session(client: httpx.AsyncClient, service: Service) -> None:
    victim = (await client.post("/api/v1/sessions", json={"limits": {"memory_mb": 256}})).json()["id"]
    bystander = (await client.post("/api/v1/sessions", json={})).json()["id"]
    try:
        await run(client, bystander, "keep = 41")
        r = await run(client, victim, MEMORY_BOMB)
        assert r["status"] == "error"
        assert r["error"]["name"] in ("KernelDied", "MemoryError"), r["error"]
        info = (await client.get(f"/api/v1/sessions/{victim}")).json()
        if r["error"]["name"] == "KernelDied":
            assert info["status"] == "dead"
            assert "memory" in info["reason"] or "SIGKILL" in info["reason"]
        assert (await run(client, bystander, "keep + 1"))["result"] == "42"
    finally:
        await client.delete(f"/api/v1/sessions/{victim}")
        await client.delete(f"/api/v1/sessions/{bystander}")


async def test_fork_bomb_stays_inside_the_pids_limit(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/api/v1/sessions", json={"limits": {"pids": 32}})).json()["id"]
    try:
        r = await run(client, sid, fork_bomb(200), timeout_s=20)
        assert "stopped 11" in r["stdout"]  # EAGAIN
        assert int(r["result"]) < 32
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")


async def test_seccomp_filter_denies_io_uring_and_namespaces(client: httpx.AsyncClient, session: dict) -> None:
    code = (
        "import ctypes, sandbox_runtime\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def call(nr, *a):\n"
        "    rc = libc.syscall(nr, *a)\n"
        "    return rc, ctypes.get_errno()\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        # 425 io_uring_setup, 272 unshare(CLONE_NEWUSER) on x86_64
        "(sandbox_runtime.SECCOMP, status['Seccomp'].strip(), call(425, 1, 0), call(272, 0x10000000))\n"
    )
    r = await run(client, session["id"], code)
    loaded, mode, io_uring, unshare = eval(r["result"])
    assert loaded == "loaded"
    assert mode == "2"
    assert io_uring == (-1, 1)  # EPERM
    assert unshare == (-1, 1)
    r = await run(client, session["id"], "import threading, subprocess\nsubprocess.run(['true']).returncode")
    assert r["result"] == "0", "fork/exec still works under the filter"
