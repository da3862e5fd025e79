"""The pool and its start queue (fast tier: FakeBackend), plus one check with real local kernels.

No test asserts a duration: starts are held on events and counted; sleeps only give warm-ups a phase to be in.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from executor.settings import Settings
from sandboxes.base import Limits, Sandbox, SandboxError
from sandboxes.fake import FakeBackend, FakeSandbox, Step
from sandboxes.pool import HostBusy, Pool, StartGate, StartQueueFull

LIMITS = Limits()


async def until(condition: Callable[[], bool], what: str = "condition", timeout: float = 10.0) -> None:
    """Wait for ``condition`` (a guard against hanging, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  (conditions on plain counters; no event to wait on)
            await asyncio.sleep(0.002)


class Held:
    """A start hook that records each start and holds it until released, counting how many run at once."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running = 0
        self.peak = 0
        self._go = asyncio.Semaphore(0)

    async def __call__(self, sandbox: FakeSandbox) -> None:
        self.started.append(sandbox.env.get("n", "pool"))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self._go.acquire()
        finally:
            self.running -= 1

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._go.release()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    backend = FakeBackend()
    yield backend
    await backend.stop()


def always() -> bool:
    return True


@pytest.fixture
def leaves_nothing(fake: FakeBackend) -> Iterable[None]:
    yield
    assert fake.created == fake.closed, f"created {fake.created}, closed {fake.closed}"
    assert fake.live == {}


def env(n: int | str) -> dict[str, str]:
    return {"n": str(n)}


@pytest.mark.parametrize("size", [2, 4])
async def test_warming_sandboxes_count_so_the_pool_never_overfills(
    fake: FakeBackend, leaves_nothing: None, size: int
) -> None:
    fake.start_delay_s = 0.005
    pool = Pool(fake, LIMITS, size, always, warm_up="sleep(0.05)")
    try:
        for _ in range(30):  # the cull loop and every hand-out call refill; none of it may overfill
            pool.refill()
            assert len(pool) <= size
            await asyncio.sleep(0.005)
        await until(lambda: len(pool.ready) == size)
        pool.refill()
        assert fake.created == size and fake.peak_live == size and len(pool) == size
    finally:
        await pool.close()


def _raising(code: str) -> Iterable[Step]:
    raise RuntimeError("the warm-up handler broke")


@pytest.mark.parametrize(
    "setup",
    [
        {"fail_start": "no kernel today"},
        {"handler": _raising},
        {"warm_up": "die(137)"},
        {"warm_up": "sleep(5)", "warm_up_timeout_s": 0.05},
    ],
    ids=["start-fails", "warm-up-raises", "dies-in-warm-up", "warm-up-times-out"],
)
async def test_a_failed_start_or_warm_up_closes_the_sandbox_and_uncounts_it(
    fake: FakeBackend, leaves_nothing: None, setup: dict[str, object]
) -> None:
    fake.fail_start = setup.get("fail_start")  # type: ignore[assignment]
    fake.handler = setup.get("handler")  # type: ignore[assignment]
    pool = Pool(
        fake,
        LIMITS,
        2,
        always,
        warm_up=str(setup.get("warm_up", "print('warm')")),
        warm_up_timeout_s=float(setup.get("warm_up_timeout_s", 60.0)),  # type: ignore[arg-type]
    )
    try:
        pool.refill()
        await until(lambda: fake.created == 2 and len(pool) == 0)
        assert fake.live == {} and fake.closed == 2
        # A request for the pool's limits then starts cold (and fails the same way only if the start does).
        if "fail_start" in setup:
            with pytest.raises(SandboxError, match="no kernel today"):
                await pool.acquire(LIMITS, deadline_s=30)
        else:
            sandbox = await pool.acquire(LIMITS, deadline_s=30)
            await sandbox.close()
    finally:
        await pool.close()


async def test_starts_go_through_one_bounded_fifo_gate(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 0, always, gate=StartGate(2))
    tasks = [asyncio.create_task(pool.acquire(LIMITS, env(i), deadline_s=60)) for i in range(6)]
    try:
        await until(lambda: len(held.started) == 2)
        await asyncio.sleep(0.01)
        assert held.running == 2 and len(held.started) == 2 and len(pool) == 6
        held.release(6)
        sandboxes = await asyncio.gather(*tasks)
        assert held.peak == 2
        assert held.started == [str(i) for i in range(6)]
        assert [s.env["n"] for s in sandboxes if isinstance(s, FakeSandbox)] == held.started
        assert len(pool) == 0
        await asyncio.gather(*(s.close() for s in sandboxes))
    finally:
        await pool.close()


async def test_a_request_goes_before_refills_that_have_not_begun(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 3, always, gate=StartGate(1), warm_up=None)
    try:
        pool.refill()
        await until(lambda: held.started == ["pool"])
        request = asyncio.create_task(pool.acquire(LIMITS, env("request"), deadline_s=60))
        await until(lambda: pool.gate.queued_urgent == 1)
        held.release()
        await until(lambda: len(held.started) == 2)
        assert held.started == ["pool", "request"]
        held.release(3)
        sandbox = await request
        await until(lambda: len(pool.ready) == 3)
        assert held.started == ["pool", "request", "pool", "pool"] and held.peak == 1
        await sandbox.close()
    finally:
        held.release(10)
        await pool.close()


async def test_refills_leave_a_slot_for_requests(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 3, always, gate=StartGate(2), warm_up=None)
    try:
        pool.refill()
        await until(lambda: held.started == ["pool"])
        await asyncio.sleep(0.01)
        assert held.running == 1 and pool.gate.running == 1  # the second slot stays free for a request
        request = asyncio.create_task(pool.acquire(LIMITS, env("request"), deadline_s=60))
        await until(lambda: held.started == ["pool", "request"])
        assert held.running == 2
        held.release(4)
        await (await request).close()
        await until(lambda: len(pool.ready) == 3)
        assert held.peak == 2
    finally:
        held.release(10)
        await pool.close()


async def test_a_request_waits_for_a_warming_sandbox_rather_than_starting_another(
    fake: FakeBackend, leaves_nothing: None
) -> None:
    # Its warm-up is believed nearly done: sooner than a cold start.
    pool = Pool(fake, LIMITS, 1, always, warm_up="sleep(0.1)", warm_up_estimate_s=0.01)
    try:
        pool.refill()
        await until(lambda: pool.stats()["warming"] == 1)
        sandbox = await pool.acquire(LIMITS, deadline_s=30)
        assert fake.created == 1 and isinstance(sandbox, FakeSandbox) and sandbox.executed == ["sleep(0.1)"]
        assert len(pool) == 0
        await sandbox.close()
    finally:
        await pool.close()


async def test_a_cold_start_goes_first_when_it_is_sooner(fake: FakeBackend, leaves_nothing: None) -> None:
    # The warm-up is believed to take 100 s: a cold start (about 1 s) is sooner.
    pool = Pool(fake, LIMITS, 1, always, warm_up="sleep(0.2)", warm_up_estimate_s=100)
    try:
        pool.refill()
        await until(lambda: pool.stats()["warming"] == 1)
        sandbox = await pool.acquire(LIMITS, deadline_s=30)
        assert fake.created == 2 and isinstance(sandbox, FakeSandbox) and sandbox.executed == []
        await sandbox.close()
    finally:
        await pool.close()


async def test_a_start_that_would_finish_past_the_deadline_is_refused_at_once(
    fake: FakeBackend, leaves_nothing: None
) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 0, always, gate=StartGate(1, hold_estimate_s=1.0), start_estimate_s=1.0)
    first = asyncio.create_task(pool.acquire(LIMITS, env(1), deadline_s=60))
    try:
        await until(lambda: held.running == 1)
        # One start ahead (about 1 s) and its own (about 1 s): 2 s, more than 1.5 s.
        with pytest.raises(StartQueueFull) as refused:
            await pool.acquire(LIMITS, env(2), deadline_s=1.5)
        assert refused.value.retry_after_s == 1 and isinstance(refused.value, SandboxError)
        assert fake.created == 1 and len(pool) == 1
        second = asyncio.create_task(pool.acquire(LIMITS, env(3), deadline_s=60))
        await until(lambda: pool.gate.queued_urgent == 1)
        held.release(2)
        for sandbox in await asyncio.gather(first, second):
            await sandbox.close()
        assert held.started == ["1", "3"]
    finally:
        held.release(10)
        await pool.close()


async def test_a_start_that_has_not_begun_by_its_deadline_is_refused(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 0, always, gate=StartGate(1, hold_estimate_s=0.01), start_estimate_s=0.01)
    first = asyncio.create_task(pool.acquire(LIMITS, env(1), deadline_s=60))
    try:
        await until(lambda: held.running == 1)
        with pytest.raises(StartQueueFull):
            await pool.acquire(LIMITS, env(2), deadline_s=0.1)
        assert pool.gate.queued_urgent == 0 and fake.created == 1 and len(pool) == 1
        held.release()
        await (await first).close()
    finally:
        held.release(10)
        await pool.close()


async def test_a_wait_for_a_warming_sandbox_past_the_deadline_is_refused(
    fake: FakeBackend, leaves_nothing: None
) -> None:
    pool = Pool(fake, LIMITS, 1, always, warm_up="sleep(0.3)", warm_up_estimate_s=0.01)
    try:
        pool.refill()
        await until(lambda: pool.stats()["warming"] == 1)
        with pytest.raises(StartQueueFull) as refused:
            await pool.acquire(LIMITS, deadline_s=0.05)
        assert refused.value.retry_after_s >= 1
        await until(lambda: len(pool.ready) == 1)  # unclaimed, it joins the stock
        assert fake.created == 1
    finally:
        await pool.close()


async def test_a_hand_out_schedules_its_refill_after_returning(fake: FakeBackend, leaves_nothing: None) -> None:
    pool = Pool(fake, LIMITS, 1, always, warm_up=None)
    try:
        pool.refill()
        await until(lambda: len(pool.ready) == 1)
        sandbox = await pool.acquire(LIMITS, deadline_s=30)
        # Nothing of the refill ran inside the request: it is only scheduled.
        assert len(pool) == 0 and fake.created == 1
        await asyncio.sleep(0)
        assert len(pool) == 1
        await until(lambda: len(pool.ready) == 1)
        assert fake.created == 2
        await sandbox.close()
    finally:
        await pool.close()


async def test_a_pooled_sandbox_that_died_is_not_handed_out(fake: FakeBackend, leaves_nothing: None) -> None:
    pool = Pool(fake, LIMITS, 1, always, warm_up=None)
    try:
        pool.refill()
        await until(lambda: len(pool.ready) == 1)
        dead = next(iter(fake.live.values()))
        await dead.kill("oom")
        sandbox = await pool.acquire(LIMITS, deadline_s=30)
        assert sandbox is not dead and sandbox.alive
        await sandbox.close()
    finally:
        await pool.close()


async def test_close_waits_for_starts_in_flight_and_leaves_nothing(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 3, always, gate=StartGate(2), warm_up="sleep(5)")
    try:
        pool.refill()
        cold = asyncio.create_task(pool.acquire(LIMITS, env("cold"), deadline_s=60))
        await until(lambda: held.running == 2)
        held.release()  # one refill goes on to its (long) warm-up
        await until(lambda: pool.stats()["warming"] == 1)
        closing = asyncio.create_task(pool.close())
        await asyncio.sleep(0.01)
        assert not closing.done()  # a start is still in flight
        held.release(10)
        await closing
        with pytest.raises(SandboxError, match="stopping"):
            await cold
        with pytest.raises(SandboxError, match="stopping"):
            await pool.acquire(LIMITS, deadline_s=30)
        assert len(pool) == 0
    finally:
        held.release(10)
        await pool.close()


async def test_a_cancelled_cold_start_leaves_nothing(fake: FakeBackend, leaves_nothing: None) -> None:
    held = Held()
    fake.start_hook = held
    pool = Pool(fake, LIMITS, 0, always)
    try:
        request = asyncio.create_task(pool.acquire(LIMITS, deadline_s=30))
        await until(lambda: held.running == 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert len(pool) == 1  # still counted: the start goes on
        held.release()
        await until(lambda: len(pool) == 0)
        assert fake.created == 1 == fake.closed
    finally:
        held.release(10)
        await pool.close()


async def test_a_cancelled_wait_puts_the_sandbox_back_in_stock(fake: FakeBackend, leaves_nothing: None) -> None:
    pool = Pool(fake, LIMITS, 1, always, warm_up="sleep(0.05)", warm_up_estimate_s=0.01)
    try:
        pool.refill()
        await until(lambda: pool.stats()["warming"] == 1)
        request = asyncio.create_task(pool.acquire(LIMITS, deadline_s=30))
        await until(lambda: any(s.claim is not None for s in pool._slots))
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: len(pool.ready) == 1)
        assert fake.created == 1 and len(pool) == 1
    finally:
        await pool.close()


async def test_may_grow_bounds_refills_and_cold_starts(fake: FakeBackend, leaves_nothing: None) -> None:
    room = [True]
    pool = Pool(fake, LIMITS, 1, lambda: room[0], warm_up=None)
    try:
        pool.refill()
        await until(lambda: len(pool.ready) == 1)
        room[0] = False
        # The pooled one is counted already: handing it out needs no room.
        sandbox = await pool.acquire(LIMITS, deadline_s=30)
        await asyncio.sleep(0.01)
        assert len(pool) == 0 and fake.created == 1  # the refill asked, and was told no
        with pytest.raises(HostBusy):
            await pool.acquire(LIMITS, deadline_s=30)
        with pytest.raises(HostBusy):
            await pool.acquire(LIMITS, env("x"), deadline_s=30)
        assert fake.created == 1
        await sandbox.close()
    finally:
        await pool.close()


async def test_a_request_outside_the_pool_starts_cold_with_its_env_and_labels(
    fake: FakeBackend, leaves_nothing: None
) -> None:
    pool = Pool(fake, LIMITS, 1, always, warm_up=None)
    try:
        pool.refill()
        await until(lambda: len(pool.ready) == 1)
        other = await pool.acquire(Limits(memory_mb=256), deadline_s=30)
        with_env = await pool.acquire(LIMITS, {"A": "1"}, {"executor.session": "s"}, deadline_s=30)
        assert isinstance(with_env, FakeSandbox) and with_env.env == {"A": "1"}
        assert isinstance(other, FakeSandbox) and other.limits.memory_mb == 256
        assert len(pool.ready) == 1 and fake.created == 3
        await other.close()
        await with_env.close()
    finally:
        await pool.close()


@pytest.mark.slow
async def test_a_local_pool_of_two_never_holds_more_than_two(settings: Settings) -> None:
    """Real kernels: several takes in a row, while the pool refills; at most 2 sandboxes not handed out."""
    from sandboxes.local import LocalBackend, LocalConfig

    backend = LocalBackend(
        LocalConfig(data_dir=settings.data_dir, run_dir=settings.run_dir, cache_dir=settings.cache_dir)
    )
    await backend.start()
    root: Path = settings.data_dir / "sandboxes"
    # A warm-up that takes a while but little CPU: the phase the old pool forgot to count.
    pool = Pool(backend, LIMITS, 2, always, warm_up="import time; time.sleep(0.3)")
    handed: list[Sandbox] = []
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            # Besides those handed out, only the pool's own and a cold start in flight may exist.
            dirs = len(await asyncio.to_thread(os.listdir, root))
            peak = max(peak, dirs - len(handed) - pool.stats()["cold"])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        pool.refill()
        for _ in range(3):
            handed.append(await pool.acquire(LIMITS, deadline_s=60))
            assert len(pool) <= 2
            await asyncio.sleep(0.2)
        await until(lambda: len(pool.ready) == 2, timeout=60)
        pool.refill()
        await asyncio.sleep(0.2)
        assert all(s.alive for s in handed)
        stop.set()
        await watcher
        assert peak <= 2, f"{peak} sandboxes besides those handed out"
    finally:
        stop.set()
        await pool.close()
        for sandbox in handed:
            await sandbox.close()
        await backend.stop()
    assert await asyncio.to_thread(os.listdir, root) == []
