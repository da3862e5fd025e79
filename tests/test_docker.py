"""The Docker backend against a real engine: security defaults from inside, limits, pool, reaper."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from executor.settings import Settings
from sandboxes.docker import LABEL_INSTANCE, LABEL_SANDBOX
from tests.conftest import (
    DOCKER_IMAGE,
    MEMORY_BOMB,
    Service,
    fork_bomb,
    labeled_containers,
    require_docker,
    run,
    start_service,
    stop_service,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def backend_name() -> str:
    return "docker"


async def test_security_defaults_from_inside(client: httpx.AsyncClient, session: dict) -> None:
    code = (
        "import ctypes, os, socket, sandbox_runtime\n"
        "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.syscall(425, 1, 0)\n"  # io_uring_setup
        "uring = (rc, ctypes.get_errno())\n"
        "try:\n"
        "    open('/x', 'w'); root_ro = False\n"
        "except OSError:\n"
        "    root_ro = True\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=2); net = True\n"
        "except OSError:\n"
        "    net = False\n"
        "(os.getuid(), st['CapEff'].strip(), st['NoNewPrivs'].strip(), st['Seccomp'].strip(), uring, root_ro, net,\n"
        " os.path.exists('/var/run/docker.sock'), sandbox_runtime.SECCOMP)\n"
    )
    r = await run(client, session["id"], code)
    uid, cap_eff, nnp, seccomp, uring, root_ro, net, sock, filt = eval(r["result"])
    assert uid == 10001
    assert int(cap_eff, 16) == 0
    assert nnp == "1" and seccomp == "2" and filt == "loaded"
    assert uring == (-1, 1)  # EPERM
    assert root_ro is True and net is False and sock is False
    r = await run(client, session["id"], "open('/work/ok.txt', 'w').write('x'); open('/tmp/t', 'w').write('x')")
    assert r["status"] == "ok"


async def test_fork_bomb_stays_inside_the_pids_limit(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/api/v1/sessions", json={"limits": {"pids": 64}})).json()["id"]
    try:
        r = await run(client, sid, fork_bomb(500), timeout_s=30)
        assert "stopped 11" in r["stdout"]
        assert int(r["result"]) < 64
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/v1/sessions")).status_code == 200
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")


async def test_memory_bomb_kills_only_its_session(client: httpx.AsyncClient) -> None:
    victim = (await client.post("/api/v1/sessions", json={"limits": {"memory_mb": 256}})).json()["id"]
    bystander = (await client.post("/api/v1/sessions", json={})).json()["id"]
    try:
        await run(client, bystander, "keep = 41")
        r = await run(client, victim, MEMORY_BOMB)
        assert r["status"] == "error" and r["error"]["name"] == "KernelDied"
        assert "out of memory" in r["error"]["value"]
        info = (await client.get(f"/api/v1/sessions/{victim}")).json()
        assert info["status"] == "dead" and "memory" in info["reason"]
        assert (await run(client, bystander, "keep + 1"))["result"] == "42"
    finally:
        await client.delete(f"/api/v1/sessions/{victim}")
        await client.delete(f"/api/v1/sessions/{bystander}")


def _rss_kib() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_100_mb_of_stdout_is_capped_and_memory_stays_flat(
    service: Service, client: httpx.AsyncClient, session: dict
) -> None:
    await run(client, session["id"], "print('warm up')")
    before = _rss_kib()
    code = "import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n'done'"
    r = await run(client, session["id"], code, timeout_s=120)
    after = _rss_kib()
    assert r["status"] == "ok" and r["truncated"] is True and r["result"] == "'done'", r["error"]
    assert len(r["stdout"]) <= service.settings.max_stream_bytes + 100
    # The service (this process) keeps at most the caps, not the 100 MB.
    assert after - before < 60 * 1024, (before, after)


async def test_workdir_is_a_size_capped_tmpfs(service: Service, client: httpx.AsyncClient, session: dict) -> None:
    if os.geteuid() != 0:
        pytest.skip("the host-side tmpfs needs root")
    mb = service.settings.work_dir_size_mb
    # Several files: one file would meet the per-file size limit (EFBIG) before the tmpfs is full.
    code = (
        "try:\n"
        f"    for i in range({mb // 32 + 2}):\n"
        "        with open(f'fill{i}.bin', 'wb') as f:\n"
        "            for _ in range(32):\n"
        "                f.write(b'0' * (1 << 20))\n"
        "except OSError as e:\n"
        "    print('full', e.errno)\n"
    )
    r = await run(client, session["id"], code, timeout_s=60)
    assert "full 28" in r["stdout"]  # ENOSPC


async def test_pooled_hand_out_and_a_dead_pooled_sandbox_is_discarded(settings: Settings) -> None:
    settings.pool_size = 2
    server, task, svc = await start_service(settings)
    try:
        manager = svc.app.state.sessions  # type: ignore[attr-defined]
        pool = manager.pools["docker"]
        for _ in range(600):
            if len(pool.ready) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pool.ready) == 2
        pooled = {s.id for s in pool.ready}
        # Kill one pooled container behind the pool's back: it must not be handed out.
        victim = pool.ready[0]
        await victim.provisioner.kill()  # the process dies; the sandbox has not been told
        async with svc.client() as c:
            r = await c.post("/api/v1/sessions", json={})
            assert r.status_code == 201
            sid = r.json()["id"]
            handed = manager.sessions[sid].sandbox
            assert handed.id in pooled and handed.id != victim.id
            res = await run(c, sid, "import sys\n'matplotlib.pyplot' in sys.modules")
            assert res["result"] == "True", "pooled kernels have pyplot imported"
            assert (await run(c, sid, "1"))["error"] is None
            # Custom limits are never served from the pool.
            r = await c.post("/api/v1/sessions", json={"limits": {"memory_mb": 300}})
            assert manager.sessions[r.json()["id"]].sandbox.id not in pooled
    finally:
        await stop_service(server, task)
    assert labeled_containers(svc.instance) == []


async def test_reaper_removes_a_planted_orphan(service: Service) -> None:
    import docker

    client = docker.from_env()
    orphan = client.containers.run(
        DOCKER_IMAGE,
        ["sleep", "300"],
        detach=True,
        labels={LABEL_INSTANCE: service.instance, LABEL_SANDBOX: "planted"},
        network_mode="none",
    )
    try:
        reaped = await service.app.state.backends["docker"].reap()  # type: ignore[attr-defined]
        assert reaped["containers"] == 1
        assert labeled_containers(service.instance) == []
    finally:
        try:
            orphan.remove(force=True)
        except docker.errors.NotFound:
            pass


async def test_orphans_of_a_crashed_run_are_removed_at_start(settings: Settings) -> None:
    import docker

    client = docker.from_env()
    from sandboxes.base import instance_id

    orphan = client.containers.run(
        DOCKER_IMAGE,
        ["sleep", "300"],
        detach=True,
        labels={LABEL_INSTANCE: instance_id(settings.data_dir), LABEL_SANDBOX: "left-by-a-crash"},
        network_mode="none",
    )
    server, task, svc = await start_service(settings)
    try:
        assert labeled_containers(svc.instance) == []
        with pytest.raises(docker.errors.NotFound):
            orphan.reload()
    finally:
        await stop_service(server, task)


async def test_choosing_a_backend_per_session(settings: Settings) -> None:
    settings.backend = "local"
    settings.allowed_backends = ["docker"]
    server, task, svc = await start_service(settings)
    try:
        async with svc.client() as c:
            body = (await c.get("/readyz")).json()
            assert set(body["backends"]) == {"local", "docker"}
            r = await c.post("/api/v1/sessions", json={"backend": "docker"})
            assert r.status_code == 201 and r.json()["backend"] == "docker"
            res = await run(c, r.json()["id"], "import os\nos.getuid()")
            assert res["result"] == "10001"
            r = await c.post("/api/v1/sessions", json={})
            assert r.json()["backend"] == "local"
    finally:
        await stop_service(server, task)


async def test_containers_are_labeled_with_instance_session_and_owner(
    service: Service, client: httpx.AsyncClient
) -> None:
    import docker

    from executor.access.keys import key_id
    from tests.conftest import KEY_A

    info = (await client.post("/api/v1/sessions", json={})).json()
    try:
        (container,) = docker.from_env().containers.list(filters={"label": f"executor.session={info['id']}"})
        assert container.labels[LABEL_INSTANCE] == service.instance
        assert container.labels[LABEL_SANDBOX] == info["sandbox_id"]
        assert container.labels["executor.owner"] == key_id(KEY_A)
    finally:
        await client.delete(f"/api/v1/sessions/{info['id']}")


async def test_backend_not_allowed_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/sessions", json={"backend": "local"})
    assert r.status_code == 400 and r.json()["field"] == "backend"


def test_a_missing_image_says_how_to_fix_it(tmp_path) -> None:
    from sandboxes.base import SandboxError
    from sandboxes.docker import DockerBackend, DockerConfig

    require_docker(image=None)  # an engine is needed, the sandbox image is not
    with pytest.raises(SandboxError, match="images/build"):
        DockerBackend(DockerConfig(data_dir=tmp_path, instance="x", image="executor-sandbox:no-such-tag"))


def test_a_missing_engine_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    """Needs no engine at all: it points the client at a socket that does not exist."""
    from sandboxes.base import SandboxError
    from sandboxes.docker import DockerBackend, DockerConfig

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="start dockerd"):
        DockerBackend(DockerConfig(data_dir=tmp_path, instance="x"))


async def test_a_death_missed_by_the_event_stream_is_still_seen(service: Service, client: httpx.AsyncClient) -> None:
    """The engine's event stream breaks (as when dockerd restarts): deaths meanwhile are found on resubscribe."""
    backend = service.app.state.backends["docker"]  # type: ignore[attr-defined]
    sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
    try:
        sandbox = service.app.state.sessions.sessions[sid].sandbox  # type: ignore[attr-defined]
        backend._events.close()  # the stream ends; the watcher subscribes again a second later
        await asyncio.to_thread(sandbox.provisioner.container.kill)
        for _ in range(100):
            if not sandbox.alive:
                break
            await asyncio.sleep(0.05)
        r = await run(client, sid, "1")
        assert r["status"] == "error" and r["error"]["name"] == "KernelDied"
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")
