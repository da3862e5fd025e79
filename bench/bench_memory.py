"""Memory per idle sandbox as PSS, beside MemAvailable's estimate and raw kernels, in the same run.

    .venv/bin/python bench/bench_memory.py [--backend local|docker] [--counts 5,20] [--settle 3] [--quick]

For each N: a fresh service (pool 0, so only the N sessions exist) gets N sessions through the API and is left
idle ``--settle`` seconds; then for every sandbox the PSS (``Pss`` of /proc/<pid>/smaps_rollup) of all its
processes is summed:
- local: the processes whose environment holds ``EXECUTOR_SANDBOX=<instance>:<sandbox>`` (bwrap and the kernel);
- docker: the container's processes (host pids from ``docker top``); the containerd shim beside it is shown apart.
Beside it: the drop in MemAvailable per sandbox (noisy: page cache, other processes), the service's own PSS
growth, and the PSS of N idle kernels started directly with jupyter_client (the floor: same venv, no jail).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from benchlib import (
    Service,
    cleanup,
    docker_sandboxes,
    local_sandboxes,
    machine_note,
    mem_available_kib,
    pss_kib,
    table,
)
from jupyter_client.manager import AsyncKernelManager


class Row:
    def __init__(self, n: int) -> None:
        self.n = n
        self.found = 0
        self.pss: list[float] = []  # MiB per sandbox
        self.procs = 0
        self.shim: list[float] = []
        self.avail_drop = 0.0  # MiB, whole
        self.service_growth = 0.0  # MiB
        self.raw: list[float] = []
        self.raw_avail_drop = 0.0
        self.detail: list[str] = []  # the first sandbox's processes: pid, name, PSS


def mib(kib: int) -> float:
    return kib / 1024


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "?"
        out.append(f"{pid} {name} {mib(pss_kib(pid)):.1f} MiB")
    return out


async def sandbox_pss(svc: Service, row: Row) -> None:
    if svc.backend == "docker":
        boxes = await asyncio.to_thread(docker_sandboxes, svc.instance)
        for pids, shim in boxes.values():
            row.detail = row.detail or describe(pids) + ([f"shim {s}" for s in describe([shim])] if shim else [])
            row.pss.append(mib(sum(pss_kib(p) for p in pids)))
            row.procs += len(pids)
            if shim is not None:
                row.shim.append(mib(pss_kib(shim)))
    else:
        for pids in (await asyncio.to_thread(local_sandboxes, svc.instance)).values():
            row.detail = row.detail or describe(pids)
            row.pss.append(mib(sum(pss_kib(p) for p in pids)))
            row.procs += len(pids)
    row.found = len(row.pss)


async def service_side(tmp: Path, n: int, args: argparse.Namespace, row: Row) -> None:
    svc = Service(tmp / f"svc{n}", backend=args.backend, pool_size=0, max_sessions=n + 1)
    await svc.start()
    try:
        async with svc.client() as c:
            # One session first and gone again: imports and caches the first one pays are not counted per sandbox.
            r = await c.post("/api/v1/sessions", json={})
            r.raise_for_status()
            await c.delete(f"/api/v1/sessions/{r.json()['id']}")
            await asyncio.sleep(args.settle)
            before, service_before = mem_available_kib(), pss_kib(svc.pid)
            ids: list[str] = []
            for i in range(0, n, 2):  # two at a time: one start per core
                rs = await asyncio.gather(*(c.post("/api/v1/sessions", json={}) for _ in range(min(2, n - i))))
                for r in rs:
                    r.raise_for_status()
                    ids.append(r.json()["id"])
            await asyncio.sleep(args.settle)
            await sandbox_pss(svc, row)
            row.avail_drop = mib(before - mem_available_kib())
            row.service_growth = mib(pss_kib(svc.pid) - service_before)
            await asyncio.gather(*(c.delete(f"/api/v1/sessions/{sid}") for sid in ids))
    finally:
        await svc.stop()


async def raw_side(tmp: Path, n: int, args: argparse.Namespace, row: Row) -> None:
    kms = [AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(tmp / f"raw{n}-{i}")) for i in range(n)]
    before = mem_available_kib()
    try:
        for i in range(0, n, 2):
            await asyncio.gather(*(km.start_kernel() for km in kms[i : i + 2]))
        await asyncio.sleep(args.settle)
        for km in kms:
            info = await km.provisioner.get_provisioner_info() if km.provisioner is not None else {}
            pid = info.get("pid")
            if isinstance(pid, int):
                row.raw.append(mib(pss_kib(pid)))
        row.raw_avail_drop = mib(before - mem_available_kib())
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms if km.has_kernel), return_exceptions=True)


def spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):6.1f} ({min(xs):.1f}-{max(xs):.1f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["local", "docker"], default="local")
    parser.add_argument("--counts", default="5,20", help="comma-separated numbers of idle sessions")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds left idle before measuring")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-kernel floor")
    parser.add_argument("--quick", action="store_true", help="N = 3, 2 s settle")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.settle = "3", 2.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rows: list[Row] = []
    try:
        for n in [int(x) for x in args.counts.split(",") if x]:
            row = Row(n)
            await service_side(tmp, n, args, row)
            if not args.no_raw:
                await raw_side(tmp, n, args, row)
            rows.append(row)
    finally:
        cleanup(tmp)

    print(f"\nidle memory per sandbox, {args.backend} backend, pool 0; {machine_note()}")
    print("PSS: shared pages divided among their users; MemAvailable: host-wide, moves with everything else\n")
    out = []
    for r in rows:
        total = sum(r.pss)
        out.append(
            [
                str(r.n),
                f"{r.found} / {r.procs}",
                spread(r.pss),
                f"{total:7.1f}",
                spread(r.shim) if r.shim else "-",
                f"{r.avail_drop / r.n:6.1f}",
                f"{r.service_growth:6.1f}",
                spread(r.raw),
                f"{r.raw_avail_drop / r.n:6.1f}" if r.raw else "-",
                f"{statistics.median(r.pss) / statistics.median(r.raw):5.2f}" if r.pss and r.raw else "-",
            ]
        )
    table(
        [
            "N",
            "found/procs",
            "PSS MiB each p50 (min-max)",
            "PSS total",
            "shim PSS each",
            "MemAvail drop each",
            "service PSS +",
            "raw kernel PSS each",
            "raw MemAvail each",
            "sandbox/raw",
        ],
        out,
    )
    for r in rows:
        print(f"N={r.n}, one sandbox's processes: " + "; ".join(r.detail))
    missing = [r for r in rows if r.found != r.n]
    if missing:
        print(f"\nwarning: found a different number of sandboxes than sessions: {[(r.n, r.found) for r in missing]}")


if __name__ == "__main__":
    asyncio.run(main())
