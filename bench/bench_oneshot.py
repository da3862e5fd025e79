"""One-shot runs (``POST /api/v1/execute``), paced and in bursts, beside a stock Jupyter server in the same run.

    .venv/bin/python bench/bench_oneshot.py [--backend local|docker] [--paced 10] [--bursts 2] [--burst-size 10]
                                            [--pool 2] [--colds 8] [--parallel] [--quick] [--no-peer]

Cells: ``print(1)`` and a plot (matplotlib, one line plot, ``plt.show()``).
- paced: one run at a time, each after the pool is full again and a short pause (the pool's best case);
- burst: ``--burst-size`` runs back to back, each sent as soon as the previous answered (the pool drains), or
  with ``--parallel`` all sent at once;
- peer: a stock ``jupyter server`` (scratch venv, see bench/README.md) doing the same work the way a chat backend
  does: ``POST /api/kernels``, execute over the websocket until reply and idle, ``DELETE /api/kernels/{id}``;
- floor: a plain cold start, ``POST /api/v1/sessions`` on a service with pool size 0 (and a one-shot there: the
  empty-pool case).
Before every measured run (either side) the service's pool is full again, so neither side runs beside the other's
background work. Prints p50/p90 and ratios; the goal lines are read off, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchlib import (
    PLOT,
    JupyterPeer,
    Service,
    cleanup,
    fmt_ms,
    has_image,
    machine_note,
    one_shot,
    p50,
    pct,
    ratio,
    table,
)

CELLS = {"print(1)": "print(1)", "plot": PLOT}


def check(name: str, result: dict[str, object]) -> None:
    """A run that did not do the work does not count as fast."""
    if result.get("status") != "ok":
        raise RuntimeError(f"{name}: status {result.get('status')}: {result}")
    if name == "plot" and not has_image(result):
        raise RuntimeError("plot: no image in the result")
    if name == "print(1)" and str(result.get("stdout", "")).strip() != "1":
        raise RuntimeError(f"print(1): stdout {result.get('stdout')!r}")


async def floor(tmp: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Cold start (pool 0): session create to ready, and a one-shot that has no pool to take from."""
    svc = Service(tmp / "cold", backend=args.backend, pool_size=0)
    await svc.start()
    out: dict[str, list[float]] = {"create": [], "oneshot": []}
    try:
        async with svc.client() as c:
            await one_shot(c, "print(1)")  # warm-up: caches, first import
            for _ in range(args.colds):
                t = time.perf_counter()
                r = await c.post("/api/v1/sessions", json={})
                out["create"].append(time.perf_counter() - t)
                r.raise_for_status()
                await c.delete(f"/api/v1/sessions/{r.json()['id']}")
                await asyncio.sleep(args.pause)  # let the teardown finish off the measured path
                elapsed, res = await one_shot(c, "print(1)")
                check("print(1)", res)
                out["oneshot"].append(elapsed)
                await asyncio.sleep(args.pause)
    finally:
        await svc.stop()
    return out


async def burst(
    args: argparse.Namespace, run: Callable[[], Awaitable[tuple[float, dict[str, Any]]]]
) -> list[tuple[float, dict[str, Any]]]:
    """``--burst-size`` runs back to back (each when the previous answered), or all at once with --parallel."""
    if args.parallel:
        return list(await asyncio.gather(*(run() for _ in range(args.burst_size))))
    return [await run() for _ in range(args.burst_size)]


async def measure(tmp: Path, args: argparse.Namespace) -> dict[tuple[str, str, str], list[float]]:
    """(side, cell, mode) -> seconds per run."""
    svc = Service(tmp / "pooled", backend=args.backend, pool_size=args.pool)
    peer = None if args.no_peer else JupyterPeer(tmp / "peer")
    samples: dict[tuple[str, str, str], list[float]] = {}
    await svc.start()
    try:
        if peer is not None:
            await peer.start()
        async with svc.client() as c:
            pc = peer.client() if peer is not None else None
            try:
                # Warm-up on both sides (font caches, first imports), not measured.
                for name, code in CELLS.items():
                    check(name, (await one_shot(c, code))[1])
                    if peer is not None and pc is not None:
                        await peer.run(pc, code)
                    await svc.wait_pool()

                async def quiet() -> None:
                    await svc.wait_pool()
                    await asyncio.sleep(args.pause)

                for name, code in CELLS.items():
                    for _ in range(args.paced):
                        await quiet()
                        elapsed, res = await one_shot(c, code)
                        check(name, res)
                        samples.setdefault(("service", name, "paced"), []).append(elapsed)
                        if peer is not None and pc is not None:
                            await quiet()
                            elapsed, got = await peer.run(pc, code)
                            if name == "plot" and not got["image"]:
                                raise RuntimeError("peer: plot gave no image")
                            samples.setdefault(("peer", name, "paced"), []).append(elapsed)
                    for _ in range(args.bursts):
                        await quiet()
                        for elapsed, res in await burst(args, partial(one_shot, c, code)):
                            check(name, res)
                            samples.setdefault(("service", name, "burst"), []).append(elapsed)
                        if peer is not None and pc is not None:
                            await quiet()
                            for elapsed, _got in await burst(args, partial(peer.run, pc, code)):
                                samples.setdefault(("peer", name, "burst"), []).append(elapsed)
            finally:
                if pc is not None:
                    await pc.aclose()
    finally:
        if peer is not None:
            await peer.stop()
        await svc.stop()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["local", "docker"], default="local")
    parser.add_argument("--paced", type=int, default=10, help="paced runs per cell")
    parser.add_argument("--bursts", type=int, default=2, help="bursts per cell")
    parser.add_argument("--burst-size", type=int, default=10)
    parser.add_argument("--parallel", action="store_true", help="send a burst's runs all at once")
    parser.add_argument("--pool", type=int, default=2, help="EXECUTOR_POOL_SIZE of the measured service")
    parser.add_argument("--colds", type=int, default=8, help="cold creates (pool 0) for the floor")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds after the pool is full again")
    parser.add_argument("--no-peer", action="store_true", help="skip the stock Jupyter server")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run that the script works")
    args = parser.parse_args()
    if args.quick:
        args.paced, args.bursts, args.colds = 4, 1, 3
    if not args.no_peer and (why := JupyterPeer.available()) is not None:
        parser.error(f"{why} (or pass --no-peer)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-oneshot-"))
    try:
        cold = await floor(tmp, args)
        s = await measure(tmp, args)
    finally:
        cleanup(tmp)

    print(
        f"\none-shot, {args.backend} backend, pool {args.pool}, burst {args.burst_size}"
        f"{' at once' if args.parallel else ' back to back'}; {machine_note()}"
    )
    if args.no_peer:
        print("peer: none (--no-peer)")
    else:
        print("peer: stock jupyter server, local kernels (POST /api/kernels + websocket execute + DELETE)")
    print("p50 x, p90 x: service / peer (below 1: the service is faster)\n")
    rows = []
    for name in CELLS:
        for mode in ("paced", "burst"):
            sv, pr = s.get(("service", name, mode), []), s.get(("peer", name, mode), [])
            rows.append(
                [
                    f"{name} {mode}",
                    str(len(sv)),
                    fmt_ms(p50(sv)),
                    fmt_ms(pct(sv, 90)),
                    fmt_ms(p50(pr)),
                    fmt_ms(pct(pr, 90)),
                    ratio(p50(sv), p50(pr)),
                    ratio(pct(sv, 90), pct(pr, 90)),
                ]
            )
    rows.append(["cold create (pool 0) = floor", str(len(cold["create"])), fmt_ms(p50(cold["create"])),
                 fmt_ms(pct(cold["create"], 90)), "", "", "", ""])  # fmt: skip
    rows.append(["one-shot print(1), pool 0", str(len(cold["oneshot"])), fmt_ms(p50(cold["oneshot"])),
                 fmt_ms(pct(cold["oneshot"], 90)), "", "", "", ""])  # fmt: skip
    table(["case (ms)", "n", "svc p50", "svc p90", "peer p50", "peer p90", "p50 x", "p90 x"], rows)

    c50 = p50(cold["create"])
    print()
    print(
        f"empty-pool one-shot / plain cold start: {ratio(p50(cold['oneshot']), c50)} "
        "(goal: the empty-pool case no slower than a cold start, plus the cell)"
    )
    for name in CELLS:
        paced50 = p50(s.get(("service", name, "paced"), []))
        burst90 = pct(s.get(("service", name, "burst"), []), 90)
        bound = 1.5 * (paced50 + c50)
        print(
            f"{name}: burst p90 {fmt_ms(burst90).strip()} ms, bound 1.5 x (paced p50 {fmt_ms(paced50).strip()} + "
            f"cold {fmt_ms(c50).strip()}) = {fmt_ms(bound).strip()} ms -> burst p90 / bound {ratio(burst90, bound)} "
            "(goal <= 1)"
        )


if __name__ == "__main__":
    asyncio.run(main())
