"""Concurrent clients: each creates a session, runs ``sum(range(10**5))``, deletes it; all start at once.

    .venv/bin/python bench/bench_load.py [--clients 20,50,100] [--backend local|docker] [--pool 2] [--quick]

For each level a fresh service (a subprocess, so its VmHWM is that level's peak) is given N+pool sessions of
capacity, and the same work is first done by one client, serially (``--serial`` times): the peer in the same run.
Prints errors by step and status code (429s with and without ``Retry-After``), throughput in cells/s, create
p50/p99 against the serial create p50, and the service process's RSS (idle, peak VmHWM, sampled) and threads.
Clients do not retry: a 429 is counted, as a chat backend would see it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from benchlib import Sampler, Service, cleanup, fmt_ms, machine_note, p50, pct, ratio, table

CODE = "sum(range(10**5))"
EXPECTED = str(sum(range(10**5)))


class Level:
    def __init__(self) -> None:
        self.creates: list[float] = []
        self.cycles: list[float] = []
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.wall = 0.0
        self.idle_rss = 0
        self.peak_rss = 0
        self.sampled_rss = 0
        self.idle_threads = 0
        self.max_threads = 0


async def cycle(c: httpx.AsyncClient, level: Level) -> None:
    t0 = time.perf_counter()
    try:
        r = await c.post("/api/v1/sessions", json={})
    except httpx.HTTPError as exc:
        level.errors[f"create {type(exc).__name__}"] += 1
        return
    if r.status_code != 201:
        retry = " Retry-After" if r.headers.get("retry-after") else ""
        level.errors[f"create {r.status_code}{retry} {error_code(r)}".rstrip()] += 1
        return
    level.creates.append(time.perf_counter() - t0)
    sid = r.json()["id"]
    try:
        r = await c.post(f"/api/v1/sessions/{sid}/executions", json={"code": CODE})
        if r.status_code != 200:
            level.errors[f"execute {r.status_code} {error_code(r)}".rstrip()] += 1
        elif r.json().get("result") != EXPECTED:
            level.errors[f"execute wrong result {r.json().get('status')}"] += 1
        else:
            level.ok += 1
    except httpx.HTTPError as exc:
        level.errors[f"execute {type(exc).__name__}"] += 1
    finally:
        try:
            r = await c.delete(f"/api/v1/sessions/{sid}")
            if r.status_code != 204:
                level.errors[f"delete {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            level.errors[f"delete {type(exc).__name__}"] += 1
    level.cycles.append(time.perf_counter() - t0)


def error_code(r: httpx.Response) -> str:
    try:
        body: Any = r.json()
        return str(body.get("error", "")) if isinstance(body, dict) else ""
    except ValueError:
        return ""


async def run_level(tmp: Path, n: int, args: argparse.Namespace) -> tuple[Level, Level]:
    svc = Service(tmp / f"n{n}", backend=args.backend, pool_size=args.pool, max_sessions=n + args.pool + 1)
    await svc.start()
    serial, load = Level(), Level()
    try:
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        async with svc.client(limits=limits, timeout=args.timeout) as c:
            # The peer: the same cycle, one client at a time, with the pool refilled in between.
            for _ in range(args.serial):
                await svc.wait_pool()
                t = time.perf_counter()
                await cycle(c, serial)
                serial.wall += time.perf_counter() - t
            await svc.wait_pool()
            await asyncio.sleep(1)
            st = svc.status()
            load.idle_rss, load.idle_threads = st.get("VmRSS", 0), st.get("Threads", 0)
            with Sampler(svc.pid) as sampler:
                t = time.perf_counter()
                await asyncio.gather(*(cycle(c, load) for _ in range(n)))
                load.wall = time.perf_counter() - t
            st = svc.status()
            load.peak_rss = st.get("VmHWM", 0)
            load.sampled_rss, load.max_threads = sampler.max_rss_kib, sampler.max_threads
    finally:
        await svc.stop()
    return serial, load


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="20,50,100", help="comma-separated concurrency levels")
    parser.add_argument("--backend", choices=["local", "docker"], default="local")
    parser.add_argument("--pool", type=int, default=2, help="EXECUTOR_POOL_SIZE")
    parser.add_argument("--serial", type=int, default=5, help="serial cycles per level (the peer)")
    parser.add_argument("--timeout", type=float, default=180, help="client timeout per request, seconds")
    parser.add_argument("--quick", action="store_true", help="levels 5,10 and 3 serial cycles")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.serial = "5,10", 3
    levels = [int(x) for x in args.clients.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    results: list[tuple[int, Level, Level]] = []
    try:
        for n in levels:
            serial, load = await run_level(tmp, n, args)
            results.append((n, serial, load))
    finally:
        cleanup(tmp)

    print(f"\nconcurrent clients (create, {CODE}, delete), {args.backend} backend, pool {args.pool}; {machine_note()}")
    print("serial: the same cycle by one client at a time, pool refilled in between (same service, same run)\n")
    rows = []
    for n, serial, load in results:
        serial_rate = serial.ok / serial.wall if serial.wall else float("nan")
        rate = load.ok / load.wall if load.wall else float("nan")
        rows.append(
            [
                str(n),
                str(load.ok),
                str(sum(load.errors.values())),
                f"{rate:6.2f}",
                f"{serial_rate:6.2f}",
                fmt_ms(p50(load.creates)),
                fmt_ms(pct(load.creates, 99)),
                fmt_ms(p50(serial.creates)),
                ratio(pct(load.creates, 99), p50(serial.creates)),
                f"{load.idle_rss / 1024:6.0f}",
                f"{load.peak_rss / 1024:6.0f}",
                f"{load.idle_threads}->{load.max_threads}",
            ]
        )
    table(
        [
            "clients",
            "ok",
            "errors",
            "cells/s",
            "serial c/s",
            "create p50",
            "create p99",
            "serial p50",
            "p99/serial",
            "RSS idle MiB",
            "VmHWM MiB",
            "threads",
        ],
        rows,
    )
    print()
    for n, serial, load in results:
        if load.errors or serial.errors:
            print(f"{n} clients errors: {dict(load.errors)}; serial: {dict(serial.errors)}")
        else:
            print(f"{n} clients: no errors")


if __name__ == "__main__":
    asyncio.run(main())
