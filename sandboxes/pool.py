"""Where sandboxes come from: a warm pool and cold starts, both through one bounded start queue.

``Pool.acquire`` is the only way the service gets a sandbox. A request for the pool's own limits and no extra
environment gets a pooled sandbox (started and warmed ahead of time, handed out once, never recycled); when none
is ready but one is already starting or warming, the request waits for it instead of starting another, unless a
cold start is estimated to be sooner (see ``Pool.acquire``). Everything else is a cold start.

Every start, refill or cold, passes a ``StartGate``: at most ``width`` at once (about one per CPU core, since a
start is CPU-bound: a Python interpreter and its imports), first come first served, requests before refills that
have not begun, and refills (start and warm-up) in at most ``width - 1`` slots so a request finds one free. A
request whose start would not finish within its ``deadline_s`` is refused at once with ``StartQueueFull`` (the
caller answers 429 with ``Retry-After``), instead of timing out in the queue.

Accounting: ``len(pool)`` is every sandbox the pool holds or is making and has not handed out (pooled ones in any
phase, cold starts for requests in flight). A sandbox stops counting here in the same step as ``acquire`` returns
it to the caller, who counts it from then on, so at no moment is one counted twice or not at all. ``may_grow()``
is asked before every refill and every cold start (not before handing out a sandbox the pool already counts).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sandboxes.base import Backend, EndEvent, Limits, Sandbox, SandboxError

log = logging.getLogger(__name__)

# pydantic too: every tool module's first call (the tool host) needs it.
WARM_UP = "__import__('matplotlib.pyplot'); __import__('pandas'); __import__('numpy'); __import__('pydantic')"

# Weight of the newest sample in the moving averages of start, warm-up and gate-hold durations.
_ALPHA = 0.3
# How long a refill waits after a hand-out while another ready sandbox is left (see _refill_after_hand_out).
REFILL_DELAY_S = 0.25


class StartQueueFull(SandboxError):
    """The start queue is too long for this request's deadline; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HostBusy(SandboxError):
    """``may_grow()`` said no: the host holds as many sandboxes as it may; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _NotBegun(Exception):
    """A gate ticket was not granted within its time."""


class _Ewma:
    def __init__(self, initial: float) -> None:
        self.value = initial

    def add(self, sample: float) -> None:
        self.value += _ALPHA * (sample - self.value)


class StartGate:
    """Bounds how many sandbox starts run at once; FIFO, and requests go before refills that have not begun.

    Refills hold at most ``refill_width`` slots (default: all but one), so a request never waits behind the
    warm-ups of refills. One gate may be shared by several pools (one per backend): they share the host's CPUs."""

    def __init__(
        self, width: int | None = None, *, refill_width: int | None = None, hold_estimate_s: float = 1.0
    ) -> None:
        self.width = max(1, width if width is not None else (os.cpu_count() or 1))
        self.refill_width = max(1, min(self.width, refill_width if refill_width is not None else self.width - 1))
        self.running = 0
        self.running_refills = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self.hold = _Ewma(hold_estimate_s)

    @property
    def queued_urgent(self) -> int:
        return sum(1 for f in self._urgent if not f.done())

    @property
    def queued_background(self) -> int:
        return sum(1 for f in self._background if not f.done())

    def wait_estimate(self) -> float:
        """Seconds until a request's ticket taken now would be granted (0 when a slot is free)."""
        ahead = self.queued_urgent
        if self.running < self.width and ahead == 0:
            return 0.0
        # Slots free up at width per average hold; ours is the (ahead + 1)-th to be granted.
        return self.hold.value * (ahead + 1) / self.width

    def _free(self, urgent: bool) -> bool:
        return self.running < self.width and (urgent or self.running_refills < self.refill_width)

    def _grant(self, urgent: bool) -> None:
        self.running += 1
        if not urgent:
            self.running_refills += 1

    async def enter(self, *, urgent: bool, begin_within: float | None = None) -> float:
        """Wait for a slot; returns the loop time it was granted, to pass to ``leave``.
        Raises ``_NotBegun`` if not granted within ``begin_within`` seconds."""
        loop = asyncio.get_running_loop()
        if self._free(urgent) and not self.queued_urgent and (urgent or not self.queued_background):
            self._grant(urgent)
            return loop.time()
        ticket: asyncio.Future[None] = loop.create_future()
        (self._urgent if urgent else self._background).append(ticket)
        try:
            if begin_within is None:
                await ticket
            else:
                async with asyncio.timeout(max(0.0, begin_within)):
                    await ticket
        except BaseException as exc:
            if ticket.done() and not ticket.cancelled():
                self.leave(None, urgent=urgent)  # granted just as we gave up: pass the slot on
            else:
                ticket.cancel()
                self._drop(ticket)
            if isinstance(exc, TimeoutError):
                raise _NotBegun from None
            raise
        return loop.time()

    def leave(self, entered_at: float | None, *, urgent: bool) -> None:
        """Give the slot back; ``entered_at`` (from ``enter``) feeds the average hold time."""
        if entered_at is not None:
            self.hold.add(asyncio.get_running_loop().time() - entered_at)
        self.running -= 1
        if not urgent:
            self.running_refills -= 1
        self._wake()

    def _drop(self, ticket: asyncio.Future[None]) -> None:
        for queue in (self._urgent, self._background):
            try:
                queue.remove(ticket)
            except ValueError:
                continue
            return

    def _wake(self) -> None:
        for urgent, queue in ((True, self._urgent), (False, self._background)):
            while queue and self._free(urgent):
                ticket = queue.popleft()
                if not ticket.done():
                    ticket.set_result(None)
                    self._grant(urgent)
            if queue and urgent:
                return  # requests still wait: refills wait behind them


Phase = Literal["queued", "starting", "warming", "ready", "handed", "closing"]


@dataclass(eq=False)
class _Slot:
    """One pooled sandbox, from its queued start to its hand-out."""

    phase: Phase = "queued"
    since: float = 0.0
    sandbox: Sandbox | None = None
    # A request waiting for this one; resolved with the sandbox, or None when its start failed.
    claim: asyncio.Future[Sandbox | None] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Pool:
    """Hands out sandboxes of one backend: pooled (``size`` kept started and warm) or started cold."""

    def __init__(
        self,
        backend: Backend,
        limits: Limits,
        size: int,
        may_grow: Callable[[], bool],
        *,
        gate: StartGate | None = None,
        warm_up: str | None = WARM_UP,
        warm_up_timeout_s: float = 60.0,
        start_estimate_s: float = 1.0,
        warm_up_estimate_s: float = 1.0,
        refill_delay_s: float = REFILL_DELAY_S,
    ) -> None:
        self.backend = backend
        self.refill_delay_s = refill_delay_s
        self.limits = limits
        self.size = size
        self.may_grow = may_grow
        self.gate = gate or StartGate(hold_estimate_s=start_estimate_s)
        self.warm_up = warm_up
        self.warm_up_timeout_s = warm_up_timeout_s
        self._start = _Ewma(start_estimate_s)
        self._warm = _Ewma(warm_up_estimate_s if warm_up else 0.0)
        self._slots: list[_Slot] = []
        self._cold = 0  # cold starts in flight (queued, starting, or finished and not yet handed out)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- accounting ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Sandboxes this pool holds or is making and has not handed out (pooled in any phase, cold starts)."""
        return len(self._slots) + self._cold

    @property
    def ready(self) -> list[Sandbox]:
        """The ready pooled sandboxes, oldest first (a view: take them with ``acquire``)."""
        return [s.sandbox for s in self._slots if s.phase == "ready" and s.sandbox is not None]

    def stats(self) -> dict[str, int]:
        """Counts by phase, for /readyz and benchmarks."""
        counts = {p: 0 for p in ("queued", "starting", "warming", "ready", "handed", "closing")}
        for slot in self._slots:
            counts[slot.phase] += 1
        return {
            **counts,
            "size": self.size,
            "cold": self._cold,
            "gate_width": self.gate.width,
            "gate_running": self.gate.running,
            "gate_queued": self.gate.queued_urgent + self.gate.queued_background,
        }

    def fits(self, limits: Limits, env: dict[str, str] | None) -> bool:
        """Whether a request with these limits and env may take a pooled sandbox."""
        return self.size > 0 and not env and limits == self.limits

    # -- hand-out --------------------------------------------------------------------------------------

    async def acquire(
        self,
        limits: Limits,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        *,
        deadline_s: float,
        layers: Sequence[Path] = (),
    ) -> Sandbox:
        """A started sandbox for a request, within ``deadline_s`` seconds or not at all.

        In order: a ready pooled sandbox (if the request ``fits``); else an in-flight pooled one that has begun
        starting or warming, unclaimed by another request, waited for, unless a cold start's estimate (queue
        wait plus the average start) is below its remaining one (the rest of the average start and warm-up,
        from moving averages of recent ones); else a cold start through the gate. A pooled one
        that has not begun is never waited for: a cold start would be at the same place in the queue and skip
        the warm-up. ``labels`` apply to cold starts only (pooled sandboxes exist before their session).
        A request with package ``layers`` is always a cold start (pooled sandboxes have none), through the same gate.

        Raises ``HostBusy`` when a cold start is needed and ``may_grow()`` says no; ``StartQueueFull`` when the
        start would not finish in time (estimated now, or not begun in time); ``SandboxError`` when the start
        fails or the pool is closed. Schedules the refill after returning, never inside the call."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while True:
            if self._closed:
                raise SandboxError("the service is stopping; no new sandboxes")
            if layers or not self.fits(limits, env):
                break
            slot = self._take_ready()
            if slot is not None:
                assert slot.sandbox is not None
                self._slots.remove(slot)
                self._refill_after_hand_out(loop)
                return slot.sandbox
            slot = self._claimable(loop.time())
            if slot is None:
                break
            sandbox = await self._wait_for(slot, end)
            if sandbox is not None:
                return sandbox
            # Its start failed: try again from the top (another ready or in-flight one, or a cold start).
        return await self._cold_start(limits, env, labels, end, tuple(layers))

    def _refill_after_hand_out(self, loop: asyncio.AbstractEventLoop) -> None:
        # A kernel start takes a CPU for about a second: begun at once, it competes with the request that just
        # took a sandbox (on a small host, its first cell ran ~2x slower). While another ready one is left for
        # the next request, the refill waits a little, so a short request (Open WebUI's whole create, cell,
        # delete) is over before it begins; with none left it begins at once.
        if self.refill_delay_s > 0 and any(s.phase == "ready" and s.claim is None for s in self._slots):
            loop.call_later(self.refill_delay_s, self.refill)
        else:
            loop.call_soon(self.refill)

    def take(self) -> Sandbox | None:
        """A ready pooled sandbox or None, without waiting; schedules a refill. (The older interface: new
        callers use ``acquire``.)"""
        slot = None if self._closed else self._take_ready()
        if slot is not None:
            self._slots.remove(slot)
        asyncio.get_running_loop().call_soon(self.refill)
        return slot.sandbox if slot is not None else None

    def _take_ready(self) -> _Slot | None:
        for slot in list(self._slots):
            if slot.phase != "ready" or slot.claim is not None:
                continue
            assert slot.sandbox is not None
            if slot.sandbox.alive:
                return slot
            reason = slot.sandbox.exit_reason
            log.warning("%s pool: a pooled sandbox died before hand-out: %s", self.backend.name, reason)
            slot.phase = "closing"
            self._spawn(self._discard(slot))
        return None

    def _eta(self, slot: _Slot, now: float) -> float:
        if slot.phase == "starting":
            return max(0.0, self._start.value - (now - slot.since)) + self._warm.value
        return max(0.0, self._warm.value - (now - slot.since))

    def _claimable(self, now: float) -> _Slot | None:
        candidates = [s for s in self._slots if s.phase in ("starting", "warming") and s.claim is None]
        if not candidates:
            return None
        best = min(candidates, key=lambda s: self._eta(s, now))
        if self.may_grow() and self.gate.wait_estimate() + self._start.value < self._eta(best, now):
            return None
        return best

    async def _wait_for(self, slot: _Slot, end: float) -> Sandbox | None:
        loop = asyncio.get_running_loop()
        claim: asyncio.Future[Sandbox | None] = loop.create_future()
        slot.claim = claim
        try:
            # Shielded: only the slot's own start resolves the claim, so a sandbox is never lost in a race.
            async with asyncio.timeout_at(end):
                await asyncio.shield(claim)
        except TimeoutError:
            if not claim.done():
                raise StartQueueFull(
                    "no sandbox became ready in time; retry later", max(1, math.ceil(self._eta(slot, loop.time())))
                ) from None
        except BaseException:
            # Cancelled: if the sandbox came just now, it goes back to stock (still counted, still ours).
            if claim.done() and claim.result() is not None and slot in self._slots:
                slot.phase = "ready"
            raise
        finally:
            if slot.claim is claim:
                slot.claim = None
        sandbox = claim.result()
        if sandbox is None:
            return None
        if self._closed or slot not in self._slots:
            if slot in self._slots:
                slot.phase = "ready"  # close() closes it with the rest
            raise SandboxError("the service is stopping; no new sandboxes")
        # Uncount it in the same step as the caller starts counting it.
        self._slots.remove(slot)
        loop.call_soon(self.refill)
        return sandbox

    async def _cold_start(
        self,
        limits: Limits,
        env: dict[str, str] | None,
        labels: dict[str, str] | None,
        end: float,
        layers: tuple[Path, ...] = (),
    ) -> Sandbox:
        loop = asyncio.get_running_loop()
        if not self.may_grow():
            raise HostBusy("this host runs as many sandboxes as it may; retry later")
        remaining = end - loop.time()
        estimate = self.gate.wait_estimate() + self._start.value
        if estimate > remaining:
            raise StartQueueFull(
                f"the sandbox start queue is {self.gate.queued_urgent} deep; a start now would take about "
                f"{estimate:.1f} s, more than the {max(remaining, 0):.1f} s allowed; retry later",
                max(1, math.ceil(estimate - remaining)),
            )
        self._cold += 1
        task = asyncio.create_task(self._start_cold(limits, env, labels, remaining - self._start.value, layers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            sandbox = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The request went away; the start goes on (a backend's create need not survive cancellation):
            # close whatever it makes, and uncount it only then.
            self._spawn(self._abandon(task))
            raise
        except BaseException:
            self._cold -= 1
            raise
        if self._closed:
            self._spawn(self._abandon(task))
            raise SandboxError("the service is stopping; no new sandboxes")
        self._cold -= 1
        return sandbox

    async def _start_cold(
        self,
        limits: Limits,
        env: dict[str, str] | None,
        labels: dict[str, str] | None,
        begin_within: float,
        layers: tuple[Path, ...] = (),
    ) -> Sandbox:
        try:
            entered = await self.gate.enter(urgent=True, begin_within=begin_within)
        except _NotBegun:
            raise StartQueueFull(
                "the sandbox start queue did not move in time; retry later",
                max(1, math.ceil(self.gate.wait_estimate() + self._start.value)),
            ) from None
        try:
            if self._closed:
                raise SandboxError("the service is stopping; no new sandboxes")
            # Only a request with layers passes the keyword, so a backend written before layers still works.
            sandbox = await (
                self.backend.create(limits, env, labels, layers=layers)
                if layers
                else self.backend.create(limits, env, labels)
            )
            self._start.add(asyncio.get_running_loop().time() - entered)
        finally:
            self.gate.leave(entered, urgent=True)
        if self._closed:
            await _close_quietly(sandbox, self.backend.name)
            raise SandboxError("the service is stopping; no new sandboxes")
        return sandbox

    async def _abandon(self, task: asyncio.Future[Sandbox]) -> None:
        try:
            sandbox = await task
        except BaseException:
            pass
        else:
            await _close_quietly(sandbox, self.backend.name)
        finally:
            self._cold -= 1

    # -- refill ----------------------------------------------------------------------------------------

    def refill(self) -> None:
        """Queue starts up to ``size`` pooled sandboxes (counting those queued, starting and warming), each
        only if ``may_grow()``. Never waits: the starts run as tasks, behind any request in the gate."""
        while not self._closed and len(self._slots) < self.size and self.may_grow():
            slot = _Slot()
            self._slots.append(slot)
            slot.task = self._spawn(self._fill(slot))

    async def _fill(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            entered = await self.gate.enter(urgent=False)
        except BaseException:
            self._slots.remove(slot)
            raise
        try:
            if self._closed:
                return
            slot.phase, slot.since = "starting", loop.time()
            sandbox = await self.backend.create(self.limits)
            slot.sandbox = sandbox
            self._start.add(loop.time() - slot.since)
            if self._closed:
                return
            if self.warm_up:
                # The first plot in a fresh kernel costs ~0.5 s of imports: pay it here, off the request path.
                slot.phase, slot.since = "warming", loop.time()
                events = sandbox.execute(self.warm_up, timeout=self.warm_up_timeout_s, silent=True)
                try:
                    async with asyncio.timeout(self.warm_up_timeout_s + 5):
                        async for event in events:
                            # An error is tolerated (an image without matplotlib); a kernel that hangs is not.
                            if isinstance(event, EndEvent) and event.status in ("timeout", "dead"):
                                raise SandboxError(f"its warm-up ended with {event.status}: {event.reason}")
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        await aclose()
                self._warm.add(loop.time() - slot.since)
            if self._closed:
                return
            if not sandbox.alive:
                raise SandboxError(f"it died during warm-up: {sandbox.exit_reason}")
        except Exception as exc:
            # Logged, not raised: nobody awaits a refill. The finally below closes and uncounts it.
            log.warning("%s pool: a sandbox failed to start: %s", self.backend.name, exc or type(exc).__name__)
        else:
            slot.phase = "ready"
            if slot.claim is not None and not slot.claim.done():
                slot.phase = "handed"
                slot.claim.set_result(sandbox)
            return
        finally:
            self.gate.leave(entered, urgent=False)
            if slot.phase not in ("ready", "handed"):
                if slot.claim is not None and not slot.claim.done():
                    slot.claim.set_result(None)
                # Close before uncounting: the host holds it until it is gone.
                slot.phase = "closing"
                if slot.sandbox is not None:
                    await _close_quietly(slot.sandbox, self.backend.name)
                self._slots.remove(slot)

    async def _discard(self, slot: _Slot) -> None:
        try:
            if slot.sandbox is not None:
                await _close_quietly(slot.sandbox, self.backend.name)
        finally:
            if slot in self._slots:
                self._slots.remove(slot)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- shutdown --------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop refilling, wait for the starts in flight (warm-ups are cut short) and close everything held.

        ``acquire`` raises ``SandboxError`` from now on; a cold start in flight finishes, is closed, and its
        request gets ``SandboxError``."""
        self._closed = True
        for slot in self._slots:
            if slot.task is not None and slot.phase in ("queued", "warming"):
                slot.task.cancel()
        # A cold start that just finished is counted until its request resumes (and, seeing the pool closed,
        # hands it to a closing task): wait for that too, so nothing outlives close().
        while self._tasks or self._cold:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)
        held = [s for s in self._slots if s.phase in ("ready", "handed") and s.sandbox is not None]
        self._slots = [s for s in self._slots if s not in held]
        await asyncio.gather(*(_close_quietly(s.sandbox, self.backend.name) for s in held if s.sandbox))


async def _close_quietly(sandbox: Sandbox, backend: str) -> None:
    try:
        await sandbox.close()
    except Exception as exc:
        log.warning("%s: closing sandbox %s failed: %s", backend, sandbox.id, exc)
