"""The egress path beside a direct connection, same run, same loopback HTTP server.

    .venv/bin/python bench/bench_egress.py [--rounds 300] [--mb 64]

The egress path is what a sandbox's request crosses: the runtime's relay (``sandboxes/runtime/relay.py``, a
thread, as in the kernel) on 127.0.0.1, the Unix socket, the service's ``SandboxProxy`` (decision, pinning,
forwarding), then the server. Both clients are httpx; the proxied one has ``proxy=`` set, as HTTP_PROXY does.

- *request*: a small GET, a new connection each time on both sides (the proxy answers ``Connection: close``).
- *download*: one large body, MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import fmt_ms, free_port, machine_note, p50, pct, table

from executor.egress.policy import SandboxPolicy
from executor.egress.proxy import EgressRecord, ProxyLimits, SandboxProxy
from sandboxes.runtime import relay

HOST = "127.0.0.2"


async def _serve(big: int) -> tuple[asyncio.Server, int]:
    body = b"x" * big

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        payload = body if head.startswith(b"GET /big") else b"ok"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def _requests(client: httpx.AsyncClient, url: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        r = await client.get(url, headers={"Connection": "close"})
        assert r.status_code == 200, r.text
        out.append(time.perf_counter() - started)
    return out


async def _download(client: httpx.AsyncClient, url: str, size: int) -> float:
    started = time.perf_counter()
    got = 0
    async with client.stream("GET", url) as r:
        async for chunk in r.aiter_raw():
            got += len(chunk)
    assert got == size, (got, size)
    return size / (time.perf_counter() - started) / 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--mb", type=int, default=64)
    args = ap.parse_args()
    size = args.mb << 20
    server, port = await _serve(size)
    records: list[EgressRecord] = []
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "egress.sock"
        limits = ProxyLimits(max_bytes_in=size * 4, max_bytes_out=1 << 30)
        proxy = SandboxProxy(SandboxPolicy.parse("allowlist", [f"{HOST}:{port}"]), limits, records.append)
        await proxy.serve(sock, owner_uid=None)
        relay_port = free_port()
        relay.start(str(sock), relay_port)
        try:
            small = f"http://{HOST}:{port}/small"
            async with (
                httpx.AsyncClient(trust_env=False) as direct,
                httpx.AsyncClient(trust_env=False, proxy=f"http://127.0.0.1:{relay_port}") as proxied,
            ):
                await _requests(direct, small, 20)  # warm both paths
                await _requests(proxied, small, 20)
                d: list[float] = []
                p: list[float] = []
                for _ in range(args.rounds // 50):  # interleaved, so both meet the same load
                    d += await _requests(direct, small, 50)
                    p += await _requests(proxied, small, 50)
                big = f"http://{HOST}:{port}/big"
                d_mb = max([await _download(direct, big, size) for _ in range(3)])
                p_mb = max([await _download(proxied, big, size) for _ in range(3)])
        finally:
            await proxy.aclose()
            server.close()
    print(machine_note())
    table(
        ["measure", "direct", "through relay + proxy", "ratio"],
        [
            ["small GET p50", fmt_ms(p50(d)), fmt_ms(p50(p)), f"{p50(p) / p50(d):.2f}x"],
            ["small GET p95", fmt_ms(pct(d, 95)), fmt_ms(pct(p, 95)), f"{pct(p, 95) / pct(d, 95):.2f}x"],
            [f"download {args.mb} MiB", f"{d_mb:.0f} MB/s", f"{p_mb:.0f} MB/s", f"{p_mb / d_mb:.2f}x"],
        ],
    )
    print(f"added per request (p50): {fmt_ms(p50(p) - p50(d))}; audit records: {len(records)}")


if __name__ == "__main__":
    asyncio.run(main())
