"""Docker backend benchmark, beside the local backend and the raw jupyter-client floor, in the same run.

    .venv/bin/python bench/bench_docker.py [--creates 10] [--rounds 200] [--idle 10,50]

Measures: cold session create (API, no pool), pooled create (API), ``1+1`` round trip in a container and in a
local kernel (API) beside raw jupyter-client on the same container's kernel, and the host memory taken by N
idle sandboxes (MemAvailable before and after, so it includes containerd shims and page cache they pin).
Needs a Docker engine and the sandbox image (scripts/docker-engine; images/build).
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

from sandboxes.base import Limits, instance_id
from sandboxes.docker import DockerBackend, DockerConfig

KEY = "bench-key"


def ms(samples: list[float]) -> tuple[float, float]:
    xs = sorted(s * 1000 for s in samples)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.9))]


def show(name: str, samples: list[float], floor: list[float] | None = None) -> float:
    p50, p90 = ms(samples)
    extra = ""
    if floor:
        f50, _ = ms(floor)
        extra = f"   floor {f50:7.2f} ms   ratio {p50 / f50:5.2f}   diff {p50 - f50:+6.2f} ms"
    print(f"{name:<34} {p50:8.2f} ms (p90 {p90:8.2f}){extra}")
    return p50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


async def raw_floor(data: Path, rounds: int) -> list[float]:
    backend = DockerBackend(DockerConfig(data_dir=data, instance=instance_id(data)))
    await backend.start()
    try:
        sb = await backend.create(Limits())
        assert sb.driver is not None
        kc = sb.driver.client

        async def once() -> float:
            t = time.perf_counter()
            msg_id = kc.execute("1+1", allow_stdin=False)
            while True:
                msg = await kc.get_iopub_msg(timeout=30)
                if (
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"
                ):
                    break
            while True:
                try:
                    r = await kc.get_shell_msg(timeout=30)
                except queue.Empty:
                    continue
                if r["parent_header"].get("msg_id") == msg_id:
                    break
            return time.perf_counter() - t

        for _ in range(20):
            await once()
        return [await once() for _ in range(rounds)]
    finally:
        await backend.stop()


async def idle_memory(data: Path, counts: list[int]) -> None:
    backend = DockerBackend(DockerConfig(data_dir=data, instance=instance_id(data)))
    await backend.start()
    try:
        for n in counts:
            before = mem_available_kib()
            boxes = []
            for i in range(0, n, 4):
                boxes += await asyncio.gather(*(backend.create(Limits()) for _ in range(min(4, n - i))))
            await asyncio.sleep(2)
            used = (before - mem_available_kib()) / 1024
            print(f"idle memory, {n:3d} sandboxes            {used:8.0f} MiB total, {used / n:6.1f} MiB each")
            await asyncio.gather(*(b.close() for b in boxes))
            await backend.sandboxes.drain()
    finally:
        await backend.stop()


async def api(data: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    port = free_port()
    env = {
        **os.environ,
        "EXECUTOR_API_KEYS": KEY,
        "EXECUTOR_DATA_DIR": str(data),
        "EXECUTOR_PORT": str(port),
        "EXECUTOR_BACKEND": "docker",
        "EXECUTOR_ALLOWED_BACKENDS": "local",
        "EXECUTOR_POOL_SIZE": "2",
        "EXECUTOR_MAX_SESSIONS_PER_PRINCIPAL": "50",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, "-m", "executor", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    out: dict[str, list[float]] = {"cold": [], "pooled": [], "docker": [], "local": []}
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            for _ in range(400):
                try:
                    r = await c.get("/readyz")
                    if r.status_code == 200 and r.json()["sessions"]["pooled"].get("docker") == 2:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)

            async def wait_pool() -> None:
                for _ in range(400):
                    if (await c.get("/readyz")).json()["sessions"]["pooled"].get("docker") == 2:
                        return
                    await asyncio.sleep(0.05)

            for _ in range(args.creates):
                await wait_pool()
                t = time.perf_counter()
                r = await c.post("/api/v1/sessions", json={})
                out["pooled"].append(time.perf_counter() - t)
                await c.delete(f"/api/v1/sessions/{r.json()['id']}")
                # Non-default limits bypass the pool: a cold start.
                t = time.perf_counter()
                r = await c.post("/api/v1/sessions", json={"limits": {"memory_mb": 500}})
                out["cold"].append(time.perf_counter() - t)
                await c.delete(f"/api/v1/sessions/{r.json()['id']}")
            for backend in ("docker", "local"):
                sid = (await c.post("/api/v1/sessions", json={"backend": backend})).json()["id"]
                for _ in range(20):
                    await c.post(f"/api/v1/sessions/{sid}/executions", json={"code": "1+1"})
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    await c.post(f"/api/v1/sessions/{sid}/executions", json={"code": "1+1"})
                    out[backend].append(time.perf_counter() - t)
                await c.delete(f"/api/v1/sessions/{sid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--idle", default="10,50")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-docker-"))
    try:
        floor = await raw_floor(tmp / "floor", args.rounds)
        res = await api(tmp / "api", args)
        print(f"Docker backend, {os.cpu_count()} CPUs")
        cold = show("cold create (API, no pool)", res["cold"])
        pooled = show("pooled create (API)", res["pooled"])
        docker_rt = show("1+1 in a container (API)", res["docker"], floor)
        show("1+1 in a local kernel (API)", res["local"], floor)
        show("1+1 raw jupyter-client, container", floor)
        f50, _ = ms(floor)
        print(f"goal: pooled create < 10 ms -> {pooled:.1f} ms {'OK' if pooled < 10 else 'MISSED'}")
        print(f"goal: cold create < 1000 ms -> {cold:.0f} ms {'OK' if cold < 1000 else 'MISSED'}")
        print(f"goal: 1+1 within 2 ms of raw -> {docker_rt - f50:+.2f} ms {'OK' if docker_rt - f50 <= 2 else 'MISSED'}")
        await idle_memory(tmp / "idle", [int(x) for x in args.idle.split(",") if x])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
