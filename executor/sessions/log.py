"""The execution log: what one execution published, for live and late SSE subscribers, within a byte budget.

Every byte in it comes from a kernel, which code in the sandbox can drive directly (it can reach its own kernel's
sockets), so nothing here grows without a bound: the retained log is capped in bytes (one ``truncated`` marker once
the cap is reached, then only the lifecycle events ``status`` and ``done``), and each subscriber has a bounded queue.
A subscriber that falls a whole queue behind is dropped: its stream ends with a ``dropped`` event naming the last
event it got, so it can resume from the retained log with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

# A payload is a JSON object, or a JSON text already encoded (the final result, dumped once).
Payload = dict[str, Any] | str

# Counted for every event besides its payload, so a flood of tiny events (clear_output) also meets the budget.
EVENT_OVERHEAD = 64
DEFAULT_QUEUE_SIZE = 256
# Events that always reach the log: the lifecycle a client needs to know where the execution is.
LIFECYCLE = frozenset({"status", "done"})


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event: its position in the log (the SSE id), name and payload. ``index`` is None for events that
    are not part of the log (a subscriber's ``dropped`` notice)."""

    index: int | None
    name: str
    payload: Payload

    def data(self) -> str:
        """The payload as JSON text."""
        if isinstance(self.payload, str):
            return self.payload
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False, default=str)


def payload_size(payload: Payload) -> int:
    """What a payload costs the budget: the length of its strings (text, base64 data, tracebacks), plus the
    per-event overhead. Cheap (no encoding) and never less than what a client is sent, up to JSON escaping."""
    return EVENT_OVERHEAD + _size(payload, 0)


def _size(value: object, depth: int) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 32:  # kernel JSON nests as deep as the kernel likes; past this, count it encoded
        return len(json.dumps(value, default=str))
    if isinstance(value, dict):
        return sum(len(str(k)) + _size(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_size(v, depth + 1) + 1 for v in value)
    return 8


class _Subscriber:
    __slots__ = ("dropped", "last_index", "maxsize", "queue", "wake")

    def __init__(self, maxsize: int) -> None:
        self.queue: deque[LogEvent] = deque()
        self.maxsize = maxsize
        self.wake = asyncio.Event()
        self.dropped = False
        self.last_index = -1


class ExecutionLog:
    """Append-only, byte-budgeted event log of one execution with bounded fan-out.

    ``publish`` never blocks and never buffers more than ``queue_size`` events per subscriber; ``close`` ends
    every subscription once the ``done`` event is in."""

    def __init__(self, budget_bytes: int, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.budget_bytes = budget_bytes
        self.queue_size = queue_size
        self.size = 0
        self.truncated = False
        self.dropped_events = 0
        self.closed = False
        self._events: list[LogEvent] = []
        self._first = 0  # index of _events[0]: compaction keeps the indexes clients already hold
        self._next = 0
        self._subscribers: set[_Subscriber] = set()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, name: str, payload: Payload) -> bool:
        """Append an event and hand it to every subscriber. Past the budget, events other than ``status`` and
        ``done`` are dropped (counted in ``dropped_events``); the first one dropped leaves a ``truncated``
        marker. Returns whether the event was kept."""
        if self.closed:
            return False
        if name not in LIFECYCLE:
            if self.truncated:
                self.dropped_events += 1
                return False
            cost = payload_size(payload)
            if self.size + cost > self.budget_bytes:
                self.dropped_events += 1
                if not self.truncated:
                    self.truncated = True
                    self._append(
                        "truncated",
                        {
                            "reason": f"this execution's events passed {self.budget_bytes} bytes; "
                            "the rest are not streamed (the result keeps what fits its own caps)",
                            "budget_bytes": self.budget_bytes,
                        },
                    )
                return False
            self.size += cost
        self._append(name, payload)
        return True

    def _append(self, name: str, payload: Payload) -> None:
        event = LogEvent(self._next, name, payload)
        self._next += 1
        self._events.append(event)
        for sub in list(self._subscribers):
            if len(sub.queue) >= sub.maxsize:
                # Too slow: stop feeding it rather than buffer for it without end.
                sub.dropped = True
                self._subscribers.discard(sub)
            else:
                sub.queue.append(event)
            sub.wake.set()

    def close(self) -> None:
        """No more events: every subscription ends after what it has queued."""
        self.closed = True
        for sub in self._subscribers:
            sub.wake.set()
        self._subscribers.clear()

    def compact(self) -> None:
        """Forget everything but the last event (``done``, once closed): for finished executions nobody is
        likely to replay. Indexes stay as they were."""
        if self.closed and len(self._events) > 1:
            self._first = self._events[-1].index or 0
            self._events = self._events[-1:]
            self.size = 0

    async def subscribe(self, after: int = -1, *, keepalive_s: float | None = None) -> AsyncIterator[LogEvent | None]:
        """The retained events with an index above ``after``, then each new one until the log closes.

        Yields None when nothing arrived for ``keepalive_s`` (the caller sends a keep-alive). A subscriber that
        falls ``queue_size`` events behind gets a last ``dropped`` event (index None) and its stream ends."""
        sub = _Subscriber(self.queue_size)
        # Snapshot and subscribe with no await in between, so no event falls in the gap.
        replay = [e for e in self._events if e.index is not None and e.index > after]
        closed = self.closed
        if not closed:
            self._subscribers.add(sub)
        try:
            for event in replay:
                sub.last_index = event.index if event.index is not None else sub.last_index
                yield event
            if closed:
                return
            while True:
                while sub.queue:
                    event = sub.queue.popleft()
                    if event.index is not None and event.index <= after:
                        continue
                    sub.last_index = event.index if event.index is not None else sub.last_index
                    yield event
                if sub.dropped:
                    yield LogEvent(
                        None,
                        "dropped",
                        {
                            "reason": f"this stream fell {self.queue_size} events behind and was ended; "
                            "reconnect with Last-Event-ID to resume from the retained log",
                            "last_event_id": sub.last_index,
                        },
                    )
                    return
                if self.closed and sub not in self._subscribers:
                    return
                sub.wake.clear()
                if sub.queue or sub.dropped:
                    continue
                if keepalive_s is None:
                    await sub.wake.wait()
                else:
                    try:
                        await asyncio.wait_for(sub.wake.wait(), keepalive_s)
                    except TimeoutError:
                        yield None
        finally:
            self._subscribers.discard(sub)
