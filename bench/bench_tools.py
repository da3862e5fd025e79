"""Tool-module calls through the service beside the same function called directly in this process, same run.

    .venv/bin/python bench/bench_tools.py [--backend local|docker] [--rounds 200] [--users 8] [--quick]

- *warm call*: ``POST /api/v1/tools/id/{id}/call/{function}`` of one user, one tool, again and again (the sandbox
  is warm: the module stays imported), against the same function of the same file ``exec``'d here and called
  directly. The issue's goal: the warm call within 15 ms (p50) of the direct one.
- *first call of a user*: a new end user's first call (a sandbox for that user is leased from the pool or started,
  the module imported, then the call), beside a session create (``POST /api/v1/sessions``) on the same service,
  alternating, so both meet the same pool and load.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import types
from pathlib import Path

from benchlib import KEY, Service, cleanup, fmt_ms, machine_note, p50, pct, table

ADMIN = "bench-admin-key"
FORWARD = "bench-forward-key"
TOOL = '''"""
title: Bench calculator
version: 1.0
"""


class Tools:
    def __init__(self):
        pass

    def add(self, a: int, b: int) -> str:
        """
        Add two numbers.
        :param a: the first
        :param b: the second
        """
        return str(a + b)
'''


def direct_calls(rounds: int) -> list[float]:
    module = types.ModuleType("bench_direct_tool")
    exec(compile(TOOL, "bench_tool.py", "exec"), module.__dict__)
    tools = module.Tools()
    samples = []
    for i in range(rounds):
        t = time.perf_counter()
        tools.add(i, 3)
        samples.append(time.perf_counter() - t)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="local", choices=["local", "docker"])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.users = 30, 3
    tmp = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    svc = Service(
        tmp / "data",
        backend=args.backend,
        pool_size=2,
        extra_env={"EXECUTOR_ADMIN_API_KEYS": ADMIN, "EXECUTOR_FORWARD_IDENTITY_API_KEYS": FORWARD},
    )
    try:
        await svc.start()
        async with svc.client() as c:
            c.headers["Authorization"] = f"Bearer {ADMIN}"
            r = await c.post(
                "/api/v1/tools/create",
                json={
                    "id": "bench_calc",
                    "name": "Bench calculator",
                    "content": TOOL,
                    "meta": {"description": "bench"},
                    "access_grants": [{"principal_type": "user", "principal_id": "*", "permission": "read"}],
                },
            )
            r.raise_for_status()
            c.headers["Authorization"] = f"Bearer {FORWARD}"
            url = "/api/v1/tools/id/bench_calc/call/add"
            warm_user = {"X-OpenWebUI-User-Id": "warm-user", "X-OpenWebUI-User-Role": "user"}
            (await c.post(url, json={"arguments": {"a": 1, "b": 2}}, headers=warm_user)).raise_for_status()
            warm = []
            for i in range(args.rounds):
                t = time.perf_counter()
                r = await c.post(url, json={"arguments": {"a": i, "b": 3}}, headers=warm_user)
                warm.append(time.perf_counter() - t)
                assert r.status_code == 200 and r.json()["result"] == str(i + 3), r.text
            direct = direct_calls(args.rounds)

            firsts, creates = [], []
            for n in range(args.users):
                await svc.wait_pool()
                user = {"X-OpenWebUI-User-Id": f"new-user-{n}", "X-OpenWebUI-User-Role": "user"}
                t = time.perf_counter()
                r = await c.post(url, json={"arguments": {"a": n, "b": 1}}, headers=user)
                firsts.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                await svc.wait_pool()
                c.headers["Authorization"] = f"Bearer {KEY}"
                t = time.perf_counter()
                r = await c.post("/api/v1/sessions", json={})
                creates.append(time.perf_counter() - t)
                assert r.status_code == 201, r.text
                await c.delete(f"/api/v1/sessions/{r.json()['id']}")
                c.headers["Authorization"] = f"Bearer {FORWARD}"
        print(f"tool calls, backend {args.backend}; {machine_note()}")
        table(
            ["case", "p50 ms", "p90 ms", "n"],
            [
                ["warm call through the API", fmt_ms(p50(warm)), fmt_ms(pct(warm, 90)), str(len(warm))],
                ["direct in-process call", fmt_ms(p50(direct)), fmt_ms(pct(direct, 90)), str(len(direct))],
                ["first call of a new user", fmt_ms(p50(firsts)), fmt_ms(pct(firsts, 90)), str(len(firsts))],
                ["session create (same pool)", fmt_ms(p50(creates)), fmt_ms(pct(creates, 90)), str(len(creates))],
            ],
        )
        diff = (p50(warm) - p50(direct)) * 1000
        print(f"goal: warm call - direct call <= 15 ms (p50): {diff:.1f} ms -> {'met' if diff <= 15 else 'NOT met'}")
        print(f"first call / session create (p50): {p50(firsts) / p50(creates):.2f}")
    finally:
        await svc.stop()
        cleanup(tmp)


if __name__ == "__main__":
    asyncio.run(main())
