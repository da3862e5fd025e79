"""Tool-server proxy benchmark: a call through the service beside a direct httpx call, same server, same run.

    .venv/bin/python bench/bench_proxy.py [--calls 500] [--warmup 50]

Starts a tiny tool server (one JSON operation) and the service (uvicorn, in this process, on loopback, with an
admin key) and times ``POST /api/v1/tool_servers/t/call/ping`` against ``GET /ping`` straight to the tool
server with one keep-alive httpx client each. Prints p50/p90 of both, their difference and their ratio.
Both servers share this process's event loop, as the tests run them; the difference is what the proxy adds.
Also prints the process's CPU time per call of each kind, steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Measure the checkout this file is in, not whichever one the venv has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn
from fastapi import FastAPI

from executor.app import create_app
from executor.settings import Settings

KEY = "bench-admin-key"


def tool_server() -> FastAPI:
    app = FastAPI(title="bench tools")

    @app.get("/ping", operation_id="ping")
    async def ping(n: int = 0) -> dict[str, Any]:
        return {"pong": n, "items": list(range(10))}

    return app


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def stats(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.9))]


CPU: dict[str, float] = {}


async def timed(n: int, once: Any, name: str = "") -> list[float]:
    out: list[float] = []
    cpu = time.process_time()
    for i in range(n):
        t = time.perf_counter()
        await once(i)
        out.append(time.perf_counter() - t)
    if name:
        CPU[name] = CPU.get(name, 0.0) + time.process_time() - cpu
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternate proxy and direct this many times")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the proxied calls only to FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        async with serve(tool_server()) as upstream:
            conn = {"type": "openapi", "url": upstream, "path": "openapi.json", "auth_type": "none",
                    "info": {"id": "t"}}  # fmt: skip
            settings = Settings(
                _env_file=None,
                admin_api_keys=[KEY],
                data_dir=Path(tmp) / "data",
                pool_size=0,
                egress_allowlist=["127.0.0.1"],
                tool_server_connections=[conn],
                tool_server_rate_limit_per_principal=0,
                tool_server_rate_limit_per_key=0,
                tool_server_rate_limit_per_connection=0,
            )
            async with (
                serve(create_app(settings)) as service,
                httpx.AsyncClient(base_url=service, headers={"Authorization": f"Bearer {KEY}"}) as via,
                httpx.AsyncClient(base_url=upstream) as direct,
            ):

                async def proxied(i: int) -> None:
                    r = await via.post("/api/v1/tool_servers/t/call/ping", json={"arguments": {"n": i}})
                    assert r.status_code == 200 and r.json()["result"]["pong"] == i, r.text

                async def plain(i: int) -> None:
                    r = await direct.get("/ping", params={"n": i})
                    assert r.status_code == 200 and r.json()["pong"] == i, r.text

                await timed(args.warmup, proxied)
                await timed(args.warmup, plain)
                if args.profile:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    await timed(args.calls, proxied)
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    return
                p: list[float] = []
                d: list[float] = []
                for _ in range(args.rounds):
                    p += await timed(args.calls, proxied, "proxy")
                    d += await timed(args.calls, plain, "direct")
    p50, p90 = stats(p)
    d50, d90 = stats(d)
    print(f"calls: {len(p)} through the service, {len(d)} direct (after {args.warmup} warm-up each)")
    print(f"through the service  p50 {p50:7.3f} ms  p90 {p90:7.3f} ms")
    print(f"direct httpx         p50 {d50:7.3f} ms  p90 {d90:7.3f} ms")
    print(f"difference           p50 {p50 - d50:+7.3f} ms  p90 {p90 - d90:+7.3f} ms")
    print(f"ratio                p50 {p50 / d50:7.2f}     p90 {p90 / d90:7.2f}")
    # CPU time of this process per call (client, service and tool server together): steadier than wall time
    # on a shared machine, and what the proxy adds is all CPU here.
    pc, dc = CPU["proxy"] / len(p) * 1000, CPU["direct"] / len(d) * 1000
    print(f"CPU per call         proxy {pc:7.3f} ms  direct {dc:7.3f} ms  difference {pc - dc:+7.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
