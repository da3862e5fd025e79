"""Sessions end cleanly: DELETE, expiry, shutdown, crash + restart; capacity limits; start-up refusals."""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from executor.app import create_app
from executor.openapi.service import ToolServerService
from executor.settings import Settings
from executor.store import Store
from sandboxes.base import SandboxError, instance_id
from sandboxes.local import LocalBackend, LocalConfig
from tests.conftest import KEY_A, KEY_B, Service, instance_cgroups, run, sandbox_processes, start_service, stop_service

AUTH = {"Authorization": f"Bearer {KEY_A}"}


async def test_delete_leaves_no_process_and_no_work_dir(service: Service, client: httpx.AsyncClient) -> None:
    sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
    await run(client, sid, "import subprocess\nsubprocess.Popen(['sleep', '300'])\nopen('f.txt','w').write('x')")
    assert len(sandbox_processes(service.instance)) >= 2
    assert list((service.settings.data_dir / "sandboxes").iterdir())
    r = await client.delete(f"/api/v1/sessions/{sid}")
    assert r.status_code == 204

    def leftovers() -> list[object]:
        return [
            *sandbox_processes(service.instance),
            *(service.settings.data_dir / "sandboxes").iterdir(),
            *Path(f"/tmp/executor-{service.instance}").iterdir(),
        ]

    # The sandbox's teardown may finish beside the answer (sandboxes/registry.py): wait for it, within a bound.
    for _ in range(200):
        if not leftovers():
            break
        await asyncio.sleep(0.05)
    assert leftovers() == []
    assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 404
    assert (await client.delete(f"/api/v1/sessions/{sid}")).status_code == 404


async def test_idle_sessions_expire(client: httpx.AsyncClient, service: Service) -> None:
    sid = (await client.post("/api/v1/sessions", json={"ttl_s": 10})).json()["id"]
    session = service.app.state.sessions.sessions[sid]  # type: ignore[attr-defined]
    session.ttl_s = 0  # the API's floor is 10 s; expire it now without waiting
    for _ in range(100):
        info = (await client.get(f"/api/v1/sessions/{sid}")).json()
        if info["status"] == "expired":
            break
        await asyncio.sleep(0.05)
    assert info["status"] == "expired" and "idle" in info["reason"]
    assert sandbox_processes(service.instance) == []
    assert list((service.settings.data_dir / "sandboxes").iterdir()) == []


async def test_capacity_limits_answer_429(settings: Settings) -> None:
    settings.max_sessions_per_principal = 1
    settings.max_sessions = 2
    server, task, svc = await start_service(settings)
    try:
        async with svc.client(KEY_A) as a, svc.client(KEY_B) as b:
            assert (await a.post("/api/v1/sessions", json={})).status_code == 201
            r = await a.post("/api/v1/sessions", json={})
            assert r.status_code == 429 and r.json()["error"] == "too_many_sessions"
            assert int(r.headers["Retry-After"]) > 0
            assert (await b.post("/api/v1/sessions", json={})).status_code == 201
            settings.max_sessions_per_principal = 5
            r = await b.post("/api/v1/sessions", json={})
            assert r.status_code == 429 and r.json()["error"] == "host_busy"
            assert "Retry-After" in r.headers
    finally:
        await stop_service(server, task)
    assert sandbox_processes(svc.instance) == []


async def test_results_survive_a_restart_and_old_sessions_are_reported_dead(settings: Settings) -> None:
    server, task, svc = await start_service(settings)
    async with svc.client() as c:
        sid = (await c.post("/api/v1/sessions", json={})).json()["id"]
        eid = (await run(c, sid, "'kept'"))["id"]
    await stop_service(server, task)
    server, task, svc = await start_service(settings)
    try:
        async with svc.client() as c:
            info = (await c.get(f"/api/v1/sessions/{sid}")).json()
            assert info["status"] == "dead" and info["reason"] == "the service stopped"
            r = await c.get(f"/api/v1/sessions/{sid}/executions/{eid}")
            assert r.status_code == 200 and r.json()["result"] == "'kept'"
    finally:
        await stop_service(server, task)


def test_sigterm_stops_every_kernel(spawn_service, settings: Settings) -> None:
    settings.pool_size = 2  # pooled kernels must go too
    svc = spawn_service()
    sid = httpx.post(f"{svc.url}/api/v1/sessions", json={}, headers=AUTH).json()["id"]
    instance = _instance(settings)
    assert sandbox_processes(instance)
    svc.kill(signal.SIGTERM)
    # uvicorn re-raises the signal once its graceful shutdown is complete.
    assert svc.proc.returncode in (0, -signal.SIGTERM), svc.log.read_text()
    assert "Application shutdown complete" in svc.log.read_text()
    assert sandbox_processes(instance) == []
    assert list((settings.data_dir / "sandboxes").iterdir()) == []
    assert not Path(f"/tmp/executor-{instance}").exists()
    assert instance_cgroups(instance) == []
    assert sid


def _crash_with_a_live_session(spawn_service, ttl_s: int = 3600) -> tuple[str, str, dict]:
    svc = spawn_service()
    info = httpx.post(f"{svc.url}/api/v1/sessions", json={"ttl_s": ttl_s}, headers=AUTH, timeout=60).json()
    r = httpx.post(
        f"{svc.url}/api/v1/sessions/{info['id']}/executions",
        json={"code": "open('x.txt','w').write('x')\n'written'"},
        headers=AUTH,
        timeout=60,
    )
    svc.kill(signal.SIGKILL)
    return info["id"], r.json()["id"], info


def test_crash_then_restart_lists_the_sessions_that_were_live(spawn_service, settings: Settings) -> None:
    sid, eid, created = _crash_with_a_live_session(spawn_service)
    assert created["sandbox_id"]
    instance = _instance(settings)
    # The kernels die with the service (parent-death signal); the dirs stay until the next start.
    assert list((settings.data_dir / "sandboxes").iterdir())
    svc2 = spawn_service()
    assert sandbox_processes(instance) == []
    listed = httpx.get(f"{svc2.url}/api/v1/sessions", headers=AUTH).json()
    assert [s["id"] for s in listed] == [sid], "the session that was live is still listed"
    (info,) = listed
    assert info["status"] == "dead" and info["reason"] == "service restarted"
    assert info["sandbox_id"] == created["sandbox_id"] and info["ref"] == created["ref"]
    assert httpx.get(f"{svc2.url}/api/v1/sessions/{sid}", headers=AUTH).json()["status"] == "dead"
    r = httpx.get(f"{svc2.url}/api/v1/sessions/{sid}/executions/{eid}", headers=AUTH)
    assert r.status_code == 200 and r.json()["result"] == "'written'"
    r = httpx.post(f"{svc2.url}/api/v1/sessions/{sid}/executions", json={"code": "1"}, headers=AUTH)
    assert r.status_code == 409 and r.json()["error"] == "session_dead"


@pytest.mark.skipif(
    "keep" not in inspect.signature(LocalBackend.start).parameters,
    reason="needs LocalBackend.start(keep=...) and workdir_of/discard from the kernel-layer change",
)
def test_crash_then_restart_keeps_their_files_until_their_ttl(spawn_service, settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("EXECUTOR_CULL_INTERVAL_S", "0.5")
    sid, _, created = _crash_with_a_live_session(spawn_service, ttl_s=10)
    svc2 = spawn_service()
    assert sandbox_processes(_instance(settings)) == []
    r = httpx.get(f"{svc2.url}/api/v1/sessions/{sid}/files/x.txt", headers=AUTH)
    assert r.status_code == 200 and r.content == b"x"
    assert [f["path"] for f in httpx.get(f"{svc2.url}/api/v1/sessions/{sid}/files", headers=AUTH).json()] == ["x.txt"]
    r = httpx.put(f"{svc2.url}/api/v1/sessions/{sid}/files/y.txt", content=b"y", headers=AUTH)
    assert r.status_code == 409
    kept = [p.name for p in (settings.data_dir / "sandboxes").iterdir()]
    assert created["sandbox_id"] in kept
    for _ in range(600):
        if httpx.get(f"{svc2.url}/api/v1/sessions", headers=AUTH).json() == []:
            break
        time.sleep(0.05)
    info = httpx.get(f"{svc2.url}/api/v1/sessions/{sid}", headers=AUTH).json()
    assert info["status"] == "expired" and "service restarted" in info["reason"]
    assert created["sandbox_id"] not in [p.name for p in (settings.data_dir / "sandboxes").iterdir()]


async def test_a_failed_start_up_stops_what_already_started(settings: Settings, monkeypatch) -> None:
    """The store and a backend (with a pooled kernel) are up when a later part fails: nothing is left."""
    settings.pool_size = 1
    instance = _instance(settings)
    closed: list[str] = []
    real_close = Store.close

    async def close(self: Store) -> None:
        closed.append(self.url)
        await real_close(self)

    async def fail(self: object) -> None:
        for _ in range(600):  # fail once a pooled kernel is running: there is something to stop
            if sandbox_processes(instance):
                break
            await asyncio.sleep(0.05)
        raise RuntimeError("tool servers could not start")

    monkeypatch.setattr(Store, "close", close)
    monkeypatch.setattr(ToolServerService, "start", fail)
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="tool servers could not start"):
        async with app.router.lifespan_context(app):
            pass
    assert closed == [settings.db_url], "the store was closed"
    assert sandbox_processes(instance) == []
    assert list((settings.data_dir / "sandboxes").iterdir()) == []
    assert instance_cgroups(instance) == []


def test_orphans_of_a_crashed_service_are_killed_at_start(settings: Settings) -> None:
    """A process carrying the instance's marker (as a kernel whose parent-death signal was lost) is reaped."""
    backend = LocalBackend(LocalConfig(data_dir=settings.data_dir, cache_dir=settings.cache_dir))
    env = {"EXECUTOR_SANDBOX": f"{backend.instance}:planted", "PATH": "/usr/bin:/bin"}
    orphan = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    planted = settings.data_dir / "sandboxes" / "planted" / "work"
    planted.mkdir(parents=True)
    try:
        reaped = backend.prepare()
        assert reaped["processes"] >= 1 and reaped["dirs"] >= 1
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert not planted.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        backend.shutdown()


def test_missing_bubblewrap_refuses_to_start_unless_opted_in(settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        LocalBackend(LocalConfig(data_dir=settings.data_dir))
    backend = LocalBackend(LocalConfig(data_dir=settings.data_dir, allow_unjailed=True))
    assert backend.jail == "none" and backend.describe()["network"].startswith("host")


def test_cli_refuses_non_loopback_without_a_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "EXECUTOR_DATA_DIR": str(tmp_path / "d")}
    r = subprocess.run(
        [sys.executable, "-m", "executor", "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "EXECUTOR_API_KEYS" in r.stderr


def _instance(settings: Settings) -> str:
    return instance_id(settings.data_dir)
