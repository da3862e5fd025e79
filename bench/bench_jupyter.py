"""What Open WebUI's users feel through the Jupyter face: ``POST /api/kernels`` + one cell over the websocket +
``DELETE``, served from the warm pool, beside a stock Jupyter server doing the same in the same run.

    .venv/bin/python bench/bench_jupyter.py [--backend local|docker] [--paced 10] [--pool 2] [--pause 0.5]
                                            [--quick] [--no-peer]

Cells: ``print(1)`` and a plot. Every run is paced: one at a time, after the service's pool is full again and a
short pause (so neither side runs beside the other's background work). Beside the face: the service's own
one-shot ``POST /api/v1/execute`` on the same pool (what the face costs over the service's own API), and the peer
(a stock ``jupyter server`` from a scratch venv, see bench/README.md) that starts a kernel for every run.
Prints p50/p90 and ratios; the goal line (face p50 for ``print(1)`` against 30 ms, and against the peer) is read
off, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from benchlib import (
    KEY,
    PLOT,
    JupyterPeer,
    Service,
    cleanup,
    fmt_ms,
    has_image,
    jupyter_run,
    machine_note,
    one_shot,
    p50,
    pct,
    ratio,
    table,
)

CELLS = {"print(1)": "print(1)", "plot": PLOT}
GOAL_P50_S = 0.030


def check(side: str, name: str, out: dict[str, Any]) -> None:
    """A run that did not do the work does not count as fast."""
    if name == "plot" and not (out.get("image") or has_image(out)):
        raise RuntimeError(f"{side} plot: no image")
    if name == "print(1)" and str(out.get("stdout", "")).strip() != "1":
        raise RuntimeError(f"{side} print(1): stdout {out.get('stdout')!r}")


async def measure(tmp: Path, args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """(side, cell) -> seconds per run; sides: face, oneshot, peer."""
    svc = Service(tmp / "pooled", backend=args.backend, pool_size=args.pool)
    peer = None if args.no_peer else JupyterPeer(tmp / "peer")
    samples: dict[tuple[str, str], list[float]] = {}
    await svc.start()
    try:
        if peer is not None:
            await peer.start()
        ws_base = svc.url.replace("http", "ws", 1)
        headers = {"Authorization": f"token {KEY}"}
        async with svc.client() as c:
            pc = peer.client() if peer is not None else None
            for name, code in CELLS.items():
                await jupyter_run(c, ws_base, headers, code)  # warm-up of each side: imports, font cache
                if peer is not None and pc is not None:
                    await peer.run(pc, code)
                for _ in range(args.paced):
                    for side in ("face", "oneshot", "peer"):
                        if side == "peer" and (peer is None or pc is None):
                            continue
                        await svc.wait_pool()
                        await asyncio.sleep(args.pause)
                        if side == "face":
                            elapsed, out = await jupyter_run(c, ws_base, headers, code)
                        elif side == "oneshot":
                            elapsed, out = await one_shot(c, code)
                        else:
                            assert peer is not None and pc is not None
                            elapsed, out = await peer.run(pc, code)
                        check(side, name, out)
                        samples.setdefault((side, name), []).append(elapsed)
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
    parser.add_argument("--paced", type=int, default=10, help="paced runs per cell and side")
    parser.add_argument("--pool", type=int, default=2, help="EXECUTOR_POOL_SIZE of the measured service")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds after the pool is full again")
    parser.add_argument("--no-peer", action="store_true", help="skip the stock Jupyter server")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run that the script works")
    args = parser.parse_args()
    if args.quick:
        args.paced = 3
    if not args.no_peer and (why := JupyterPeer.available()) is not None:
        parser.error(f"{why} (or pass --no-peer)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-jupyter-"))
    try:
        s = await measure(tmp, args)
    finally:
        cleanup(tmp)

    print(f"\nJupyter face, {args.backend} backend, pool {args.pool}, paced; {machine_note()}")
    print("face: POST /api/kernels + websocket execute until reply and idle + DELETE (what Open WebUI does)")
    print("oneshot: POST /api/v1/execute on the same service; peer: a stock jupyter server, a kernel per run\n")
    rows = []
    for name in CELLS:
        face, once, peer = s.get(("face", name), []), s.get(("oneshot", name), []), s.get(("peer", name), [])
        rows.append([name, str(len(face)), fmt_ms(p50(face)), fmt_ms(pct(face, 90)), fmt_ms(p50(once)),
                     fmt_ms(p50(peer)), ratio(p50(face), p50(once)), ratio(p50(face), p50(peer))])  # fmt: skip
    table(["cell (ms)", "n", "face p50", "face p90", "oneshot p50", "peer p50", "face/oneshot", "face/peer"], rows)
    face50 = p50(s.get(("face", "print(1)"), []))
    print(f"\nprint(1) through the face: p50 {fmt_ms(face50).strip()} ms, goal {GOAL_P50_S * 1000:.0f} ms -> "
          f"{ratio(face50, GOAL_P50_S)} (goal <= 1)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
