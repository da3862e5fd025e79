"""Replicas sharing one store: quotas count across them, a restart reports only its own sessions, and a session
of a shared backend (kernels on a gateway) is served by whichever replica is asked. The fast tier runs two
managers in one process on one SQLite file with fake sandboxes; the end-to-end test (two service processes, one
real PostgreSQL, one gateway) is further down."""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from executor.errors import NotFound, RateLimited
from executor.openapi.ratelimit import SharedRateLimiter
from executor.sessions import NewSession
from executor.store import Store
from sandboxes.fake import FakeBackend, FakeSandbox
from tests.conftest import KEY_A, KEY_B, ServiceProcess, free_port, run, serve_process
from tests.gateway import Gateway, gateway_kernels, start_gateway
from tests.postgres import Postgres, start_postgres
from tests.test_manager import OWNER, Harness, _settings


class SharedFake(FakeBackend):
    """A fake whose sandboxes every replica reaches, as kernels on a gateway are."""

    shared = True

    def __init__(self, root: Path, gateway: dict[str, FakeSandbox]) -> None:
        super().__init__(root)
        self.live = gateway

    async def attach(self, sandbox_id: str) -> FakeSandbox:
        from sandboxes.base import SandboxError

        sandbox = self.live.get(sandbox_id)
        if sandbox is None:
            raise SandboxError("the kernel is gone from the gateway")
        return sandbox


async def _pair(tmp_path: Path, shared: bool = False, **extra: object) -> tuple[Harness, Harness]:
    gateway: dict[str, FakeSandbox] = {}
    replicas = []
    for n in (1, 2):
        settings = _settings(tmp_path, **extra)
        # One database, two instances (their own data dirs, as two hosts would have).
        settings = settings.model_copy(
            update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", "data_dir": tmp_path / f"r{n}"}
        )
        h = Harness(tmp_path, settings, root=tmp_path / f"fake{n}")
        if shared:
            h.backend = SharedFake(tmp_path / f"fake{n}", gateway)
            h.manager.backends["local"] = h.backend
            h.manager.pools["local"].backend = h.backend
        replicas.append(await h.start())
    return replicas[0], replicas[1]


async def test_quotas_count_every_replicas_sessions(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path, max_sessions_per_principal=2, max_sessions_per_key=3)
    try:
        await a.manager.create(OWNER, NewSession())
        await b.manager.create(OWNER, NewSession())
        for replica in (a, b):
            with pytest.raises(RateLimited) as refused:
                await replica.manager.create(OWNER, NewSession())
            assert refused.value.code == "too_many_sessions"
        await b.manager.create(f"{OWNER}/alice", NewSession())
        with pytest.raises(RateLimited) as refused:
            await a.manager.create(f"{OWNER}/bob", NewSession())
        assert refused.value.code == "too_many_sessions_for_key"
    finally:
        await a.stop()
        await b.stop()


async def test_a_restarting_replica_reports_only_its_own_sessions_dead(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        kept = await a.manager.create(OWNER, NewSession())
        lost = await b.manager.create(OWNER, NewSession())
        await b.crash()
        b2 = await Harness(tmp_path, b.settings, root=b.root).start()
        try:
            assert (await b2.store.get_session(lost.id)).status == "dead"  # type: ignore[union-attr]
            assert (await b2.store.get_session(kept.id)).status == "idle"  # type: ignore[union-attr]
            assert a.manager.get(OWNER, kept.id).status == "idle"
        finally:
            await b2.stop()
    finally:
        await a.stop()


async def test_a_shared_session_is_served_by_the_other_replica_and_ends_everywhere(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path, shared=True)
    try:
        session = await a.manager.create(OWNER, NewSession())
        with pytest.raises(NotFound):
            await b.manager.find("key-other", session.id)
        assert [v.id for v in await b.manager.list_everywhere(OWNER)] == [session.id]
        assert await b.manager.list_everywhere("key-other") == []
        on_b = await b.manager.find(OWNER, session.id)
        ex = b.manager.submit(on_b, "print('from b')", None)
        await ex.done.wait()
        assert ex.snapshot().stdout == "from b\n"
        # b's activity moved the expiry in the store: a does not cull a session b is using.
        await b.manager.persist.close()
        row = await a.store.get_session(session.id)
        assert row is not None and row.expires_at.replace(tzinfo=None) >= session.expires_at.replace(tzinfo=None)
        # A replica crashing does not end it (the fake gateway keeps the kernel), and an end on b is seen on a.
        await b.manager.delete(OWNER, session.id)
        with pytest.raises(NotFound):
            await a.manager.find(OWNER, session.id)
        with pytest.raises(NotFound):
            await a.manager.view(OWNER, session.id)
    finally:
        await a.stop()
        await b.stop()


async def test_a_shared_session_whose_kernel_is_gone_is_dead_not_missing(tmp_path: Path) -> None:
    from executor.errors import Conflict

    a, b = await _pair(tmp_path, shared=True)
    try:
        session = await a.manager.create(OWNER, NewSession())
        assert session.sandbox is not None
        a.backend.live.pop(session.sandbox.id)  # the gateway culled it
        with pytest.raises(Conflict) as dead:
            await b.manager.find(OWNER, session.id)
        assert "gone from the gateway" in dead.value.message
        row = await b.store.get_session(session.id)
        assert row is not None and row.status == "dead"
    finally:
        a.backend.live.clear()
        await a.stop()
        await b.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = start_postgres(free_port())
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'rates.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.url


async def test_shared_rate_limits_count_every_replicas_calls(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    await stores[0].create_all()
    try:
        clock = 1_000_000 * 60 + 30.0  # half-way through a minute
        scope = f"t-{secrets.token_hex(4)}"
        a, b = (SharedRateLimiter(s, scope, 3, clock=clock) for s in stores)
        assert await a.take("alice") is None
        assert await b.take("alice") is None
        assert await a.take("alice") is None
        for limiter in (a, b):
            wait = await limiter.take("alice")
            assert wait is not None and 0 < wait <= 30
        assert await b.take("bob") is None, "another key has its own budget"
        await a.refund("alice")
        assert await b.take("alice") is None
        # The next minute starts a new budget.
        a.clock = b.clock = clock + 60
        assert await b.take("alice") is None
    finally:
        for s in stores:
            await s.close()


# -- end to end: two service processes, one real PostgreSQL, one gateway ---------------------------------------


def _spawn_replica(name: str, tmp_path: Path, pg: Postgres, gw: Gateway) -> ServiceProcess:
    port = free_port()
    env = {
        **os.environ,
        "EXECUTOR_API_KEYS": f"{KEY_A},{KEY_B}",
        "EXECUTOR_DATA_DIR": str(tmp_path / name),
        "EXECUTOR_CACHE_DIR": str(tmp_path / "cache"),
        "EXECUTOR_PORT": str(port),
        "EXECUTOR_POOL_SIZE": "0",
        "EXECUTOR_BACKEND": "remote",
        "EXECUTOR_REMOTE_URL": gw.url,
        "EXECUTOR_REMOTE_TOKEN": gw.token,
        "EXECUTOR_REMOTE_WORK_DIR": str(gw.work_dir),
        "EXECUTOR_DATABASE_URL": pg.url,
        "EXECUTOR_RATE_LIMIT_STORE": "database",
        "EXECUTOR_MAX_SESSIONS_PER_PRINCIPAL": "2",
    }
    return serve_process(env, port, tmp_path / f"{name}.log")


async def _stream(client: httpx.AsyncClient, sid: str, code: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    async with client.stream(
        "POST", f"/api/v1/sessions/{sid}/executions", json={"code": code}, headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.status_code == 200, await resp.aread()
        name = None
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name is not None:
                events.append((name, json.loads(line[6:])))
                name = None
    return events


@pytest.mark.slow
async def test_two_replicas_serve_one_session_and_it_survives_a_sigkill(tmp_path: Path, postgres: Postgres) -> None:
    gw = start_gateway(tmp_path / "gateway")
    replicas: list[ServiceProcess] = []
    try:
        a = _spawn_replica("a", tmp_path, postgres, gw)
        replicas.append(a)
        b = _spawn_replica("b", tmp_path, postgres, gw)
        replicas.append(b)
        auth = {"Authorization": f"Bearer {KEY_A}"}
        async with (
            httpx.AsyncClient(base_url=a.url, headers=auth, timeout=60) as on_a,
            httpx.AsyncClient(base_url=b.url, headers=auth, timeout=60) as on_b,
        ):
            r = await on_a.post("/api/v1/sessions", json={})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert r.json()["backend"] == "remote"
            assert (await run(on_a, sid, "x = 41\nprint('on a')"))["stdout"] == "on a\n"

            # The other replica attaches to the same kernel: the state is there, and output streams as it comes.
            events = await _stream(
                on_b,
                sid,
                "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\nx + 1",
            )
            ticks = [p["text"] for n, p in events if n == "stream"]
            assert "".join(ticks) == "tick 0\ntick 1\ntick 2\n" and len(ticks) >= 2, events
            assert events[-1][0] == "done" and events[-1][1]["result"] == "42"
            assert (await on_b.get(f"/api/v1/sessions/{sid}")).json()["status"] == "idle"
            other = httpx.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60)
            async with other:
                assert (await other.get(f"/api/v1/sessions/{sid}")).status_code == 404
                assert (await other.post(f"/api/v1/sessions/{sid}/executions", json={"code": "1"})).status_code == 404

            # Quotas count across replicas: one session on a, one on b, a third is refused on either.
            second = await on_b.post("/api/v1/sessions", json={})
            assert second.status_code == 201, second.text
            for client in (on_a, on_b):
                refused = await client.post("/api/v1/sessions", json={})
                assert refused.status_code == 429 and refused.json()["error"] == "too_many_sessions", refused.text

            # The replica that created the session is killed: the session lives on through the other.
            a.kill(signal.SIGKILL)
            replicas.remove(a)
            assert (await run(on_b, sid, "x * 2"))["result"] == "82"
            # A replica that starts again does not report it dead, and serves it too.
            a2 = _spawn_replica("a", tmp_path, postgres, gw)
            replicas.append(a2)
            async with httpx.AsyncClient(base_url=a2.url, headers=auth, timeout=60) as on_a2:
                assert (await run(on_a2, sid, "x"))["result"] == "41"
                # Ended through one replica, it is gone on the other, and from the gateway.
                assert (await on_a2.delete(f"/api/v1/sessions/{sid}")).status_code == 204
            assert (await on_b.get(f"/api/v1/sessions/{sid}")).status_code == 404
            gone = await on_b.post(f"/api/v1/sessions/{sid}/executions", json={"code": "1"})
            assert gone.status_code == 404, gone.text
            assert (await on_b.delete(f"/api/v1/sessions/{second.json()['id']}")).status_code == 204
        assert gateway_kernels(gw) == []
    finally:
        for replica in replicas:
            replica.kill(signal.SIGTERM)
        gw.stop()
