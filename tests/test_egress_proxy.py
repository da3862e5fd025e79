"""executor.egress.proxy: a real Unix socket, real loopback HTTP and HTTPS (trustme CA) upstreams.

Names resolve through a fake resolver to 127.0.0.1, so loopback stands for "the outside"; the allow-list grants
``allowed.test`` by its exact name (the only way an internal address is reachable), and everything else is
refused by a rule the test names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from executor.egress.policy import Mode, SandboxPolicy
from executor.egress.proxy import EgressRecord, ProxyLimits, SandboxProxy

BIG = 1 << 20


async def resolve(host: str, port: int) -> Sequence[str]:
    table = {"allowed.test": ["127.0.0.1"], "denied.test": ["127.0.0.1"], "in.wild.test": ["127.0.0.1"]}
    if host not in table:
        raise OSError(-2, "Name or service not known")
    return table[host]


POLICY = SandboxPolicy.parse(Mode.ALLOWLIST, ["allowed.test", "*.wild.test"])


@dataclass
class Upstream:
    """A loopback HTTP/1.1 server answering by path; it keeps what it was sent (request line, headers)."""

    port: int = 0
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    redirect_to: str = ""


async def _answer(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    up.seen.append((lines[0], headers))
    if int(headers.get("content-length", "0")):
        await reader.readexactly(int(headers["content-length"]))
    path = lines[0].split(" ")[1]
    if path == "/big":
        body = b"x" * BIG
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            writer.write(body[i : i + 65536])
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    elif path == "/redirect":
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {up.redirect_to}\r\nContent-Length: 0\r\n\r\n".encode())
    else:
        body = f"hello {path}".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def upstream(ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    up = Upstream()
    server = await asyncio.start_server(lambda r, w: _answer(up, r, w), "127.0.0.1", 0, ssl=ssl_ctx)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()


@contextlib.asynccontextmanager
async def tcp_to_unix(path: Path) -> AsyncIterator[int]:
    """What the sandbox's relay does: 127.0.0.1:PORT -> the proxy's Unix socket (so httpx can use it as proxy)."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.write_eof()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(path))
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@dataclass
class Env:
    proxy: SandboxProxy
    path: Path
    records: list[EgressRecord]
    http: Upstream
    https: Upstream
    client_ssl: ssl.SSLContext
    relay_port: int

    def client(self, **kw: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{self.relay_port}",
            verify=self.client_ssl,
            trust_env=False,
            **kw,  # type: ignore[arg-type]
        )


@contextlib.asynccontextmanager
async def environment(tmp_path: Path, limits: ProxyLimits | None = None) -> AsyncIterator[Env]:
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("allowed.test").configure_cert(server_ssl)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    records: list[EgressRecord] = []
    proxy = SandboxProxy(POLICY, limits or ProxyLimits(idle_timeout_s=5), records.append, resolve=resolve)
    path = tmp_path / "egress.sock"
    await proxy.serve(path, owner_uid=os.getuid())
    async with upstream() as http, upstream(server_ssl) as https, tcp_to_unix(path) as relay_port:
        try:
            yield Env(proxy, path, records, http, https, client_ssl, relay_port)
        finally:
            await proxy.aclose()


async def raw(path: Path, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a fresh Unix-socket connection; read the answer to EOF."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def settle(records: list[EgressRecord], n: int) -> None:
    """Records are emitted when a connection's handler ends, just after the client saw its answer."""
    for _ in range(500):
        if len(records) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} records, got {records}")


async def test_serve_binds_a_private_socket_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "egress.sock"
    path.write_text("stale")
    proxy = SandboxProxy(POLICY, ProxyLimits(), lambda r: None, resolve=resolve)
    await proxy.serve(path, owner_uid=os.getuid())
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    await proxy.aclose()
    assert not path.exists()
    await proxy.aclose()  # idempotent
    open_proxy = SandboxProxy(POLICY, ProxyLimits(), lambda r: None, resolve=resolve)
    await open_proxy.serve(path, owner_uid=None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    await open_proxy.aclose()


async def test_connect_allowed_tunnels_tls_end_to_end(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        async with env.client() as client:
            resp = await client.get(f"https://allowed.test:{env.https.port}/secure")
            assert resp.status_code == 200 and resp.text == "hello /secure"
        await settle(env.records, 1)  # the tunnel lives as long as the client keeps it
        rec = env.records[0]
        assert (rec.method, rec.host, rec.port, rec.allowed) == ("CONNECT", "allowed.test", env.https.port, True)
        assert rec.rule == "allow:allowed.test" and rec.addresses == ("127.0.0.1",)
        assert rec.bytes_in > 0 and rec.bytes_out > 0 and rec.cut is None and rec.error is None
        # the upstream saw the request only inside TLS: the proxy never read it
        assert env.https.seen[0][0] == "GET /secure HTTP/1.1"


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("denied.test:443", "not-listed"),
        ("in.wild.test:443", "loopback"),  # a wildcard never grants an internal address
        ("169.254.169.254:80", "not-listed"),
        ("2130706433:80", "ip-literal"),
        ("nowhere.test:443", "not-listed"),
    ],
)
async def test_connect_refused_with_json_naming_the_rule(tmp_path: Path, target: str, rule: str) -> None:
    async with environment(tmp_path) as env:
        status, headers, body = await raw(env.path, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert status == 403
        assert headers["content-type"] == "application/json" and headers["connection"] == "close"
        data = json.loads(body)
        host, _, port = target.rpartition(":")
        assert data["host"] == host
        assert data["error"] == "egress_refused" and data["rule"] == rule and data["policy"] == "allowlist"
        assert data["port"] == int(port) and data["reason"]
        await settle(env.records, 1)
        assert env.records[0].allowed is False and env.records[0].rule == rule
        assert env.records[0].bytes_in == env.records[0].bytes_out == 0


async def test_public_policy_refuses_metadata(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.proxy.policy = SandboxPolicy(Mode.PUBLIC)
        status, _, body = await raw(env.path, b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n")
        assert status == 403 and json.loads(body)["rule"] == "metadata" and json.loads(body)["policy"] == "public"


async def test_plain_http_forwarded_in_origin_form_without_proxy_headers(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, env.client() as client:
        resp = await client.get(
            f"http://allowed.test:{env.http.port}/page?q=1",
            headers={"Proxy-Authorization": "Basic c2VjcmV0", "X-Keep": "yes"},
        )
        assert resp.status_code == 200 and resp.text == "hello /page?q=1"
        assert "keep-alive" not in resp.headers  # hop-by-hop, dropped on the way back
        line, headers = env.http.seen[0]
        assert line == "GET /page?q=1 HTTP/1.1"
        assert headers["host"] == f"allowed.test:{env.http.port}" and headers["x-keep"] == "yes"
        assert not any(name.startswith("proxy-") for name in headers)
        await settle(env.records, 1)
        rec = env.records[0]
        assert (rec.method, rec.host, rec.allowed, rec.rule) == ("GET", "allowed.test", True, "allow:allowed.test")
        assert rec.bytes_in > 0 and rec.bytes_out > 0


async def test_plain_http_post_body_is_forwarded(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, env.client() as client:
        resp = await client.post(f"http://allowed.test:{env.http.port}/up", content=b"payload" * 100)
        assert resp.status_code == 200
        assert env.http.seen[0][1]["content-length"] == "700"
        await settle(env.records, 1)
        assert env.records[0].bytes_out > 700


async def test_plain_http_refused(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, env.client() as client:
        resp = await client.get(f"http://denied.test:{env.http.port}/")
        assert resp.status_code == 403
        assert resp.json()["rule"] == "not-listed" and resp.json()["host"] == "denied.test"
        assert env.http.seen == []


async def test_redirect_to_a_refused_host_is_refused_on_the_second_request(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, env.client(follow_redirects=True) as client:
        env.http.redirect_to = f"http://denied.test:{env.http.port}/stolen"
        resp = await client.get(f"http://allowed.test:{env.http.port}/redirect")
        assert resp.status_code == 403 and resp.json()["rule"] == "not-listed"
        assert [line for line, _ in env.http.seen] == ["GET /redirect HTTP/1.1"]
        await settle(env.records, 2)
        assert [(r.host, r.allowed) for r in env.records] == [("allowed.test", True), ("denied.test", False)]


async def test_non_proxy_requests_are_400(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        for request in (
            b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            b"GET https://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            b"GET ftp://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            b"CONNECT allowed.test HTTP/1.1\r\n\r\n",
            b"NONSENSE\r\n\r\n",
        ):
            status, _, body = await raw(env.path, request)
            assert status == 400, request
            assert json.loads(body)["error"] == "egress_bad_request"
        status, _, _ = await raw(env.path, b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
        assert status == 431


async def test_byte_cap_cuts_a_plain_download(tmp_path: Path) -> None:
    cap = 200_000
    async with environment(tmp_path, ProxyLimits(max_bytes_in=cap)) as env, env.client() as client:
        with pytest.raises(httpx.HTTPError):
            resp = await client.get(f"http://allowed.test:{env.http.port}/big")
            await resp.aread()
        await settle(env.records, 1)
        rec = env.records[0]
        assert rec.cut == "bytes" and rec.bytes_in <= cap
        assert env.proxy.usage()["bytes_in"] <= cap
        # the sandbox's allowance is spent: the next connection is refused up front
        status, _, body = await raw(env.path, f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert status == 429 and json.loads(body) == {"error": "egress_limit", "limit": "bytes_in"}


async def test_byte_cap_cuts_a_tunnel(tmp_path: Path) -> None:
    cap = 300_000
    async with environment(tmp_path, ProxyLimits(max_bytes_in=cap)) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.path))
        writer.write(f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        writer.write(b"GET /big HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        got = await reader.read()  # until the proxy cuts the tunnel
        writer.close()
        assert len(got) == cap
        await settle(env.records, 1)
        assert env.records[0].cut == "bytes" and env.records[0].bytes_in == cap


async def test_connection_cap_answers_429(tmp_path: Path) -> None:
    async with environment(tmp_path, ProxyLimits(max_connections=1)) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.path))
        writer.write(f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert env.proxy.usage()["connections"] == 1
        status, _, body = await raw(env.path, f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert status == 429 and json.loads(body) == {"error": "egress_limit", "limit": "connections"}
        await settle(env.records, 1)
        assert env.records[0].cut == "connections" and env.records[0].allowed is False
        writer.close()


async def test_idle_tunnel_is_cut(tmp_path: Path) -> None:
    async with environment(tmp_path, ProxyLimits(idle_timeout_s=0.2)) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.path))
        writer.write(f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert await reader.read() == b""  # nothing sent either way: the proxy closes it
        writer.close()
        await settle(env.records, 1)
        assert env.records[0].cut == "idle"


async def test_upstream_connect_failure_is_502(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        status, _, body = await raw(env.path, f"CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n".encode())
        assert status == 502 and json.loads(body)["error"] == "egress_upstream"
        await settle(env.records, 1)
        assert env.records[0].allowed is True and env.records[0].error


async def test_policy_replaced_at_runtime(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.proxy.policy = SandboxPolicy(Mode.NONE)
        status, _, body = await raw(env.path, f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert status == 403 and json.loads(body)["rule"] == "policy:none" and json.loads(body)["policy"] == "none"


async def test_aclose_cuts_live_tunnels_and_leaves_nothing(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.path))
        writer.write(f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await env.proxy.aclose()
        assert await reader.read() == b""
        writer.close()
        assert not env.path.exists()
        assert env.proxy.usage()["connections"] == 0
        assert env.proxy._tasks == set()
        assert env.records[0].error == "proxy closed"
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(str(env.path))


async def test_connection_lifetime_is_capped(tmp_path: Path) -> None:
    async with environment(tmp_path, ProxyLimits(connection_timeout_s=0.2, idle_timeout_s=30)) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.path))
        writer.write(f"CONNECT allowed.test:{env.http.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert await reader.read() == b""
        writer.close()
        await settle(env.records, 1)
        assert env.records[0].cut == "time"
