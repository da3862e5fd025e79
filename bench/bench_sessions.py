"""Sessions benchmark: the HTTP API beside raw jupyter-client on a kernel started the same way, same run.

    .venv/bin/python bench/bench_sessions.py [--creates 15] [--rounds 200] [--plots 8]

Prints median and p90 of: session create to ready, ``1+1`` round trip, a plot cell; and the ratio (or the
difference, for round trips) against the floor. The service runs as a separate process, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from sandboxes.base import Limits
from sandboxes.local import LocalBackend, LocalConfig

KEY = "bench-key"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"


def stats(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.9))]


def row(name: str, api: list[float], floor: list[float]) -> None:
    a50, a90 = stats(api)
    f50, f90 = stats(floor)
    print(
        f"{name:<28} api {a50:8.2f} ms (p90 {a90:8.2f})   floor {f50:8.2f} ms (p90 {f90:8.2f})"
        f"   ratio {a50 / f50:5.2f}   diff {a50 - f50:+7.2f} ms"
    )


async def floor(args: argparse.Namespace, data: Path, cache: Path) -> dict[str, list[float]]:
    backend = LocalBackend(LocalConfig(data_dir=data / "floor", cache_dir=cache))
    backend.prepare()
    out: dict[str, list[float]] = {"create": [], "1+1": [], "plot": []}
    try:
        for _ in range(args.creates):
            t = time.perf_counter()
            sb = await backend.create(Limits())
            out["create"].append(time.perf_counter() - t)
            await sb.close()
        sb = await backend.create(Limits())
        assert sb.driver is not None
        kc = sb.driver.client  # the plain AsyncKernelClient: no driver code on the measured path

        async def once(code: str) -> float:
            t = time.perf_counter()
            msg_id = kc.execute(code, allow_stdin=False)
            idle = reply = False
            while not (idle and reply):
                if not idle:
                    msg = await kc.get_iopub_msg(timeout=30)
                    if (
                        msg["parent_header"].get("msg_id") == msg_id
                        and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"
                    ):
                        idle = True
                if idle and not reply:
                    try:
                        r = await kc.get_shell_msg(timeout=30)
                    except queue.Empty:
                        continue
                    reply = r["parent_header"].get("msg_id") == msg_id
            return time.perf_counter() - t

        for _ in range(20):
            await once("1+1")
        out["1+1"] = [await once("1+1") for _ in range(args.rounds)]
        await once(PLOT)
        out["plot"] = [await once(PLOT) for _ in range(args.plots)]
        await sb.close()
    finally:
        backend.shutdown()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def api(args: argparse.Namespace, data: Path, cache: Path) -> dict[str, list[float]]:
    port = free_port()
    env = {
        **os.environ,
        "EXECUTOR_API_KEYS": KEY,
        "EXECUTOR_DATA_DIR": str(data / "api"),
        "EXECUTOR_CACHE_DIR": str(cache),
        "EXECUTOR_PORT": str(port),
        "EXECUTOR_MAX_SESSIONS_PER_PRINCIPAL": "50",
        "EXECUTOR_POOL_SIZE": "0",  # the goal is create-to-ready without a pool (bench_docker measures pooled)
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, "-m", "executor", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {"create": [], "1+1": [], "plot": []}
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            for _ in range(200):
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            for _ in range(args.creates):
                t = time.perf_counter()
                r = await c.post("/api/v1/sessions", json={})
                out["create"].append(time.perf_counter() - t)
                await c.delete(f"/api/v1/sessions/{r.json()['id']}")
            sid = (await c.post("/api/v1/sessions", json={})).json()["id"]

            async def once(code: str) -> float:
                t = time.perf_counter()
                r = await c.post(f"/api/v1/sessions/{sid}/executions", json={"code": code})
                elapsed = time.perf_counter() - t
                assert r.json()["status"] == "ok", r.text
                return elapsed

            for _ in range(20):
                await once("1+1")
            out["1+1"] = [await once("1+1") for _ in range(args.rounds)]
            await once(PLOT)
            out["plot"] = [await once(PLOT) for _ in range(args.plots)]
            await c.delete(f"/api/v1/sessions/{sid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--plots", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    cache = tmp / "cache"
    try:
        # Interleave the two sides twice so drift on a loaded machine hits both alike.
        f1, a1 = await floor(args, tmp, cache), await api(args, tmp, cache)
        a2, f2 = await api(args, tmp, cache), await floor(args, tmp, cache)
        print(f"local backend, jail {LocalBackend(LocalConfig(data_dir=tmp / 'x')).jail}, {os.cpu_count()} CPUs")
        for name, label in (("create", "session create to ready"), ("1+1", "1+1 round trip"), ("plot", "plot cell")):
            row(label, a1[name] + a2[name], f1[name] + f2[name])
        create50, _ = stats(a1["create"] + a2["create"])
        rt_api, _ = stats(a1["1+1"] + a2["1+1"])
        rt_floor, _ = stats(f1["1+1"] + f2["1+1"])
        print(f"goal: create < 700 ms -> {create50:.0f} ms {'OK' if create50 < 700 else 'MISSED'}")
        diff = rt_api - rt_floor
        print(f"goal: 1+1 within 2 ms of raw -> {diff:+.2f} ms {'OK' if diff <= 2 else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
