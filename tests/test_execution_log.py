"""The execution log: a byte budget over every kind of event, bounded subscriber queues, replay for late
subscribers. Pure unit tests (no kernel)."""

from __future__ import annotations

import asyncio

from executor.sessions.log import EVENT_OVERHEAD, ExecutionLog, LogEvent, payload_size


async def _drain(log: ExecutionLog, after: int = -1) -> list[LogEvent]:
    return [e async for e in log.subscribe(after) if e is not None]


def test_every_kind_of_payload_counts() -> None:
    assert payload_size({"name": "stdout", "text": "x" * 1000}) >= 1000
    assert payload_size({}) == EVENT_OVERHEAD  # clear_output: tiny, but never free
    error = {"name": "E", "value": "v" * 100, "traceback": ["t" * 500] * 10}
    assert payload_size(error) >= 5100
    display = {"index": 0, "update": True, "output": {"type": "image", "data": "A" * 4096, "text": None}}
    assert payload_size(display) >= 4096
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100):  # kernel JSON nests as deep as the kernel likes
        node["k"] = {}
        node = node["k"]  # type: ignore[assignment]
    assert payload_size(deep) > EVENT_OVERHEAD


def test_past_the_budget_one_marker_then_only_lifecycle_events() -> None:
    log = ExecutionLog(10_000)
    assert log.publish("status", {"status": "running"})
    kept = 0
    for _ in range(1000):
        if log.publish("stream", {"name": "stdout", "text": "x" * 100}):
            kept += 1
    assert 0 < kept < 100 and log.truncated
    assert log.dropped_events == 1000 - kept
    assert log.size <= log.budget_bytes
    names = [name for name in (e.name for e in log._events)]
    assert names.count("truncated") == 1
    assert log.publish("done", '{"status":"ok"}')  # the end always gets through
    assert names[-1] == "truncated" and len(log) == len(names) + 1


def test_floods_of_small_events_are_bounded_too() -> None:
    for name, payload in [
        ("clear", {}),
        ("output", {"index": 0, "update": True, "output": {"type": "text", "data": "frame"}}),
        ("error", {"name": "E", "value": "", "traceback": ["line"] * 50}),
        ("result", {"text": "r" * 10, "output": None}),
    ]:
        log = ExecutionLog(64 << 10)
        for _ in range(100_000):
            log.publish(name, payload)
        assert len(log) < (64 << 10) // EVENT_OVERHEAD + 2, name
        assert log.truncated


async def test_a_live_subscriber_gets_every_event_in_order() -> None:
    log = ExecutionLog(1 << 20)
    got: list[LogEvent] = []

    async def consume() -> None:
        async for event in log.subscribe():
            assert event is not None
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for i in range(10):
        log.publish("stream", {"text": str(i)})
        await asyncio.sleep(0)
    log.publish("done", "{}")
    log.close()
    await asyncio.wait_for(task, 5)
    assert [e.index for e in got] == list(range(11))
    assert got[-1].name == "done" and got[-1].data() == "{}"
    assert log.subscribers == 0


async def test_a_slow_subscriber_is_dropped_not_buffered() -> None:
    log = ExecutionLog(1 << 20, queue_size=8)
    log.publish("status", {"status": "running"})
    stream = log.subscribe()
    first = await anext(stream)  # subscribed, and replayed what was there
    assert first is not None and first.name == "status"
    for i in range(100):
        log.publish("stream", {"text": str(i)})
    assert log.subscribers == 0, "the slow subscriber was let go"
    rest = [e async for e in stream if e is not None]
    assert len(rest) <= 9
    assert rest[-1].name == "dropped" and rest[-1].index is None
    last_seen = rest[-2].index
    assert isinstance(rest[-1].payload, dict) and rest[-1].payload["last_event_id"] == last_seen
    # ... and it resumes from the retained log where it stopped.
    log.publish("done", "{}")
    log.close()
    resumed = await _drain(log, after=last_seen or 0)
    assert resumed[0].index == (last_seen or 0) + 1 and resumed[-1].name == "done"


async def test_a_late_subscriber_replays_the_retained_log() -> None:
    log = ExecutionLog(1 << 20)
    log.publish("status", {"status": "queued"})
    log.publish("stream", {"text": "a"})
    log.publish("done", "{}")
    log.close()
    assert [e.name for e in await _drain(log)] == ["status", "stream", "done"]
    assert [e.name for e in await _drain(log, after=1)] == ["done"]
    log.compact()  # old executions keep only their end, under the same id
    assert [(e.index, e.name) for e in await _drain(log)] == [(2, "done")]
    assert await _drain(log, after=2) == []


async def test_keepalive_while_nothing_happens() -> None:
    log = ExecutionLog(1 << 20)
    log.publish("status", {"status": "running"})
    stream = log.subscribe(keepalive_s=0.01)
    assert (await anext(stream)) is not None
    assert (await anext(stream)) is None  # a keep-alive, not an event
    log.publish("done", "{}")
    log.close()
    assert [e.name async for e in stream if e is not None] == ["done"]
