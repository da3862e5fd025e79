"""The session manager on a FakeBackend (no kernels, no bwrap, no Docker): errors, durability, cancel escalation,
one-shot files, sessions kept across a crash. The fast tier: seconds, not minutes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from executor.errors import Conflict, Invalid, NotFound, RateLimited, TooLarge, Unavailable
from executor.sessions import KILLED, RESTARTED, Execution, NewSession, Session, SessionManager
from executor.settings import Settings
from executor.store import Store
from sandboxes.base import DisplayEvent, SandboxBusy, SandboxError
from sandboxes.fake import FakeBackend, FakeSandbox, Step

OWNER = "key-test"


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        backend="local",
        pool_size=0,
        cull_interval_s=0.05,
        cancel_grace_s=0.3,
        **extra,  # type: ignore[arg-type]
    )


class Harness:
    """A manager on a FakeBackend named ``local`` and a SQLite store, as the lifespan would make them."""

    def __init__(self, tmp_path: Path, settings: Settings, root: Path | None = None, **fake: object) -> None:
        self.settings = settings
        self.root = root or tmp_path / "fake"
        self.backend = FakeBackend(self.root, **fake)  # type: ignore[arg-type]
        self.store = Store(settings.db_url)
        self.manager = SessionManager(settings, self.store, {"local": self.backend})  # type: ignore[dict-item]

    async def start(self) -> Harness:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.create_all()
        await self.manager.start()
        return self

    async def stop(self) -> None:
        await self.manager.stop()
        await self.store.close()

    async def crash(self) -> None:
        """As a SIGKILL would leave things: no session ended, no sandbox closed, nothing flushed after now."""
        m = self.manager
        tasks = [t for t in (m._culler, *(s.worker for s in m.sessions.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.backend.live.clear()  # the "processes" are gone; their dirs stay on disk
        await self.store.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await Harness(tmp_path, _settings(tmp_path)).start()
    try:
        yield h
    finally:
        await h.stop()


def _sandbox(session: Session) -> FakeSandbox:
    assert isinstance(session.sandbox, FakeSandbox)
    return session.sandbox


async def _until_running(ex: Execution) -> None:
    for _ in range(500):
        if ex.status == "running":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the execution never started")


async def _run(manager: SessionManager, session: Session, code: str, timeout_s: float | None = None) -> dict:
    ex = manager.submit(session, code, timeout_s)
    await ex.done.wait()
    return json.loads(ex.answer_json())


async def test_a_cell_runs_and_its_result_is_stored_before_it_is_answered(harness: Harness) -> None:
    m = harness.manager
    session = await m.create(OWNER, NewSession())
    ex = m.submit(session, "print('hi')\nresult('42')", None)
    await ex.done.wait()
    # Read through a second Store on the same database, as another process (or the next run) would.
    other = Store(harness.settings.db_url)
    try:
        row = await other.get_execution(ex.id)
    finally:
        await other.close()
    assert row is not None and row.status == "ok"
    assert row.result["stdout"] == "hi\n" and row.result["result"] == "42"
    assert json.loads(ex.answer_json()) == row.result  # one dump, the same bytes answered and stored


async def test_results_of_a_burst_are_stored_in_few_transactions(harness: Harness, monkeypatch) -> None:
    m = harness.manager
    batches: list[int] = []
    insert = harness.store.insert_executions

    async def counting(rows: list[dict]) -> None:
        batches.append(len(rows))
        await insert(rows)

    monkeypatch.setattr(harness.store, "insert_executions", counting)
    sessions = [await m.create(OWNER, NewSession()) for _ in range(4)]
    results = await asyncio.gather(*(_run(m, s, f"result('{i}')") for i, s in enumerate(sessions)))
    assert [r["result"] for r in results] == ["0", "1", "2", "3"]
    assert sum(batches) == 4 and len(batches) <= 4


async def test_domain_errors_not_http(harness: Harness, tmp_path: Path) -> None:
    m = harness.manager
    with pytest.raises(Invalid) as bad:
        await m.create(OWNER, NewSession(ttl_s=10**9))
    assert bad.value.field == "ttl_s"
    with pytest.raises(NotFound):
        m.get(OWNER, "nope")
    harness.settings.max_sessions_per_principal = 1
    await m.create(OWNER, NewSession())
    with pytest.raises(RateLimited) as limited:
        await m.create(OWNER, NewSession())
    assert limited.value.code == "too_many_sessions" and limited.value.retry_after_s > 0


async def test_a_sandbox_that_cannot_start_is_unavailable(tmp_path: Path) -> None:
    h = await Harness(tmp_path, _settings(tmp_path), fail_start="no kernel today").start()
    try:
        with pytest.raises(Unavailable, match="no kernel today"):
            await h.manager.create(OWNER, NewSession())
        assert h.manager._starting == {}
    finally:
        await h.stop()


async def test_restart_during_a_restart_and_execute_during_one_are_409(harness: Harness, monkeypatch) -> None:
    m = harness.manager
    session = await m.create(OWNER, NewSession())
    sandbox = _sandbox(session)
    gate = asyncio.Event()
    real_restart = sandbox.restart

    async def slow_restart() -> None:
        await gate.wait()
        await real_restart()

    monkeypatch.setattr(sandbox, "restart", slow_restart)
    first = asyncio.create_task(m.restart(OWNER, session.id))
    await asyncio.sleep(0)
    with pytest.raises(Conflict) as again:
        await m.restart(OWNER, session.id)
    assert again.value.code == "session_restarting"
    with pytest.raises(Conflict) as busy:
        m.submit(session, "print(1)", None)
    assert busy.value.code == "session_restarting"
    gate.set()
    await first
    assert (await _run(m, session, "print(1)"))["stdout"] == "1\n"

    async def refuses() -> None:
        raise SandboxBusy("the kernel is already restarting")

    monkeypatch.setattr(sandbox, "restart", refuses)
    with pytest.raises(Conflict, match="already restarting"):
        await m.restart(OWNER, session.id)

    async def fails() -> None:
        raise SandboxError("the kernel would not come back")

    monkeypatch.setattr(sandbox, "restart", fails)
    with pytest.raises(Unavailable, match="would not come back"):
        await m.restart(OWNER, session.id)
    assert session.status == "dead"


async def test_a_busy_sandbox_fails_the_cell_not_the_worker(harness: Harness, monkeypatch) -> None:
    m = harness.manager
    session = await m.create(OWNER, NewSession())

    def busy(code: str, *, timeout: float, silent: bool = False) -> object:
        raise SandboxBusy("the kernel is restarting")

    monkeypatch.setattr(_sandbox(session), "execute", busy)
    r = await _run(m, session, "print(1)")
    assert r["status"] == "error" and r["error"]["name"] == "SandboxBusy"
    assert session.status == "idle"


async def test_a_flood_of_display_updates_is_bounded_and_says_so(tmp_path: Path) -> None:
    def handler(code: str) -> Iterable[Step]:
        yield DisplayEvent(data={"text/html": "<p>0</p>"}, display_id="d")
        for i in range(50_000):  # each replaces the output: the result stays small, the event log would not
            yield DisplayEvent(data={"text/html": f"<p>{i}</p>" + "x" * 200}, display_id="d", update=True)

    settings = _settings(tmp_path, max_stream_bytes=1024, max_outputs_bytes=1024)
    h = await Harness(tmp_path, settings, handler=handler).start()
    try:
        session = await h.manager.create(OWNER, NewSession())
        ex = h.manager.submit(session, "flood", None)
        await ex.done.wait()
        assert ex.log.truncated and ex.log.size <= h.manager.log_budget
        assert len(ex.log) < h.manager.log_budget // 64 + 3
        names = [e.name async for e in ex.log.subscribe() if e is not None]
        assert names.count("truncated") == 1 and names[-1] == "done"
        assert json.loads(ex.answer_json())["truncated"] is True
    finally:
        await h.stop()


async def test_cancel_kills_a_cell_that_ignores_interrupts(harness: Harness) -> None:
    m = harness.manager
    session = await m.create(OWNER, NewSession())
    ex = m.submit(session, "hang()", 60)
    await _until_running(ex)
    await m.cancel(session, ex)
    assert ex.done.is_set()
    result = json.loads(ex.answer_json())
    assert result["status"] == "cancelled"
    assert result["error"]["name"] == "KernelDied" and result["error"]["value"] == KILLED
    assert _sandbox(session).interrupts >= 1 and _sandbox(session).state == "dead"
    assert session.status == "dead" and session.reason == KILLED
    with pytest.raises(Conflict):
        m.submit(session, "print(1)", None)
    await m.restart(OWNER, session.id)  # brought back as after a timeout
    assert (await _run(m, session, "print('back')"))["stdout"] == "back\n"


async def test_cancel_of_an_interruptible_cell_keeps_the_session(harness: Harness) -> None:
    m = harness.manager
    session = await m.create(OWNER, NewSession())
    ex = m.submit(session, "sleep(30)", None)
    await _until_running(ex)
    await m.cancel(session, ex)
    assert json.loads(ex.answer_json())["status"] == "cancelled"
    assert session.status == "idle" and _sandbox(session).state == "idle"


async def test_one_shot_returns_big_files_inline_up_to_its_cap(harness: Harness) -> None:
    m = harness.manager
    big = "x" * (3 << 20)
    raw = await m.run_once(OWNER, f"write('big.bin', '{big}')\nwrite('small.txt', 'hi')")
    files = {f["path"]: f for f in json.loads(raw)["files"]}
    assert files["big.bin"]["size"] == 3 << 20 and files["big.bin"]["data"] and files["big.bin"]["url"] is None
    assert files["small.txt"]["data"]
    assert m.sessions == {}
    harness.settings.one_shot_max_files_bytes = 1 << 20
    with pytest.raises(TooLarge, match=r"big\.bin") as refused:
        await m.run_once(OWNER, f"write('big.bin', '{big}')")
    assert "EXECUTOR_ONE_SHOT_MAX_FILES_BYTES" in refused.value.message
    assert m.sessions == {}


async def test_sessions_live_at_a_crash_are_kept_dead_with_their_files_until_their_ttl(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = await Harness(tmp_path, settings).start()
    session = await first.manager.create(OWNER, NewSession(ttl_s=60))
    eid = (await _run(first.manager, session, "write('out.txt', 'kept')\nresult('done')"))["id"]
    sandbox_id, ref = session.sandbox_id, session.ref
    assert sandbox_id and ref
    stray = first.root / "not-a-session"  # a dir no session owns: not kept
    stray.mkdir()
    await first.crash()

    second = await Harness(tmp_path, settings, root=first.root).start()
    m = second.manager
    try:
        (view,) = m.list(OWNER)
        assert view.id == session.id and view.status == "dead" and view.reason == RESTARTED
        assert view.sandbox_id == sandbox_id and view.ref == ref
        assert not stray.exists()
        restored = m.get(OWNER, session.id)
        assert (m.workdir(restored) / "out.txt").read_text() == "kept"
        found = await m.get_execution(OWNER, session.id, eid)
        assert isinstance(found, str) and json.loads(found)["result"] == "done"
        with pytest.raises(Conflict):
            m.submit(restored, "print(1)", None)
        with pytest.raises(Conflict):
            m.workdir(restored, write=True)
        with pytest.raises(Conflict):
            await m.restart(OWNER, session.id)
        assert m._in_use() == 0, "a dead session holds no capacity"
        # Its ttl ends: removed, and its files with it.
        restored.ttl_s = 0
        for _ in range(200):
            ended = await m.view(OWNER, session.id)
            if ended.status == "expired":
                break
            await asyncio.sleep(0.02)
        assert ended.status == "expired" and RESTARTED in (ended.reason or "")
        assert m.list(OWNER) == []
        assert not (first.root / sandbox_id).exists()
    finally:
        await second.stop()


async def test_a_second_restart_within_the_ttl_still_lists_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = await Harness(tmp_path, settings).start()
    session = await first.manager.create(OWNER, NewSession(ttl_s=600))
    await first.crash()
    second = await Harness(tmp_path, settings, root=first.root).start()
    expires = second.manager.get(OWNER, session.id).expires_at
    await second.crash()
    third = await Harness(tmp_path, settings, root=first.root).start()
    try:
        again = third.manager.get(OWNER, session.id)
        assert again.status == "dead" and again.reason == RESTARTED
        assert abs((again.expires_at - expires).total_seconds()) < 1, "not extended by each restart"
        assert third.manager.workdir(again).is_dir()
    finally:
        await third.stop()


async def test_an_old_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, owner VARCHAR(200), backend VARCHAR(32), "
        "status VARCHAR(16), reason TEXT, limits JSON, ttl_s INTEGER, created_at DATETIME, expires_at DATETIME)"
    )
    con.execute(
        "INSERT INTO sessions VALUES ('old', 'o', 'local', 'closed', NULL, '{}', 10, "
        "'2026-01-01 00:00:00', '2026-01-01 00:00:10')"
    )
    con.commit()
    con.close()
    store = Store(f"sqlite+aiosqlite:///{db}")
    try:
        await store.create_all()
        await store.create_all()  # idempotent
        row = await store.get_session("old")
        assert row is not None and row.owner == "o" and row.sandbox_id is None and row.ref is None
    finally:
        await store.close()
