"""The outbound policy: address classes, allow-list, pinned connections, redirects, retries, caps."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpcore
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from executor.net import (
    EgressDenied,
    EgressPolicy,
    GuardedBackend,
    OutboundClient,
    OutboundLimits,
    OutboundResponse,
    check_header,
    check_path_value,
    forbidden_reason,
    numeric_host_problem,
    parse_url,
    redact,
)
from tests.toolserver_helpers import counting_tcp_server, serve

LIMITS = OutboundLimits(
    connect_timeout_s=2, read_timeout_s=5, total_timeout_s=10, retries=2, backoff_s=0.01, max_redirects=3
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


def test_allowlist_parsing_and_matching() -> None:
    policy = EgressPolicy.from_entries(["Internal.example", "db.local:5432", "10.0.0.0/8", "fd00::/8", " "])
    ip = ipaddress.ip_address
    assert policy.allows("internal.example", 80, ip("192.168.0.1"))
    assert policy.allows("db.local", 5432, ip("192.168.0.1"))
    assert not policy.allows("db.local", 5433, ip("192.168.0.1"))
    assert policy.allows("whatever", 1, ip("10.9.9.9"))
    assert not policy.allows("whatever", 1, ip("11.0.0.1"))
    assert policy.allows("x", 1, ip("fd00::1"))
    assert EgressPolicy.from_entries(["127.0.0.1:8080"]).allows("127.0.0.1", 8080, ip("127.0.0.1"))
    with pytest.raises(ValueError, match="bad/entry"):
        EgressPolicy.from_entries(["bad/entry"])


async def test_resolve_refuses_names_that_resolve_internally() -> None:
    with pytest.raises(EgressDenied) as err:
        await EgressPolicy().resolve("localhost", 80)
    assert err.value.rule == "loopback"
    assert "EXECUTOR_EGRESS_ALLOWLIST" in err.value.message
    assert await EgressPolicy.from_entries(["localhost"]).resolve("localhost", 80)


def test_header_and_path_checks() -> None:
    check_header("X-Ok", "fine value")
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\0"):
        with pytest.raises(EgressDenied) as err:
            check_header("X-Test", bad)
        assert err.value.rule == "header-injection"
    with pytest.raises(EgressDenied):
        check_header("X-Bad\r\nName", "v")
    check_path_value("id", "a..b")
    for bad in ("..", ".", "../etc", "a/../../b", "..\\x"):
        with pytest.raises(EgressDenied) as err:
            check_path_value("id", bad)
        assert err.value.rule == "path-traversal"


async def test_refused_without_any_packet() -> None:
    async with counting_tcp_server() as (port, count):
        client = OutboundClient(EgressPolicy(), LIMITS)
        try:
            for url in (f"http://127.0.0.1:{port}/x", f"http://localhost:{port}/x", f"http://[::1]:{port}/"):
                with pytest.raises(EgressDenied) as err:
                    await client.request("GET", url)
                assert err.value.rule == "loopback"
        finally:
            await client.aclose()
        assert count[0] == 0


def _app() -> FastAPI:
    app = FastAPI()
    state = {"flaky": 0, "flaky_post": 0}

    @app.get("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(
            {"headers": dict(request.headers), "host": request.headers.get("host"), "url": str(request.url)}
        )

    @app.post("/echo")
    async def echo_post(request: Request) -> JSONResponse:
        return JSONResponse({"headers": dict(request.headers), "body": (await request.body()).decode()})

    @app.get("/redirect")
    async def redirect(to: str, code: int = 302) -> RedirectResponse:
        return RedirectResponse(to, status_code=code)

    @app.post("/redirect")
    async def redirect_post(to: str, code: int = 302) -> RedirectResponse:
        return RedirectResponse(to, status_code=code)

    @app.get("/loop")
    async def loop() -> RedirectResponse:
        return RedirectResponse("/loop")

    @app.get("/flaky")
    async def flaky() -> Response:
        state["flaky"] += 1
        if state["flaky"] < 3:
            return PlainTextResponse("busy", status_code=503)
        return JSONResponse({"attempts": state["flaky"]})

    @app.post("/flaky")
    async def flaky_post() -> Response:
        state["flaky_post"] += 1
        return PlainTextResponse("busy", status_code=503)

    @app.get("/big")
    async def big() -> Response:
        return PlainTextResponse("x" * 200_000)

    app.state.counters = state
    return app


async def test_requests_through_the_guard() -> None:
    app = _app()
    async with serve(app) as base:
        port = httpx.URL(base).port
        policy = EgressPolicy.from_entries([f"127.0.0.1:{port}", f"localhost:{port}"])
        client = OutboundClient(policy, LIMITS)
        try:
            # The name is resolved and checked, then the checked address is dialled; Host stays the name.
            resp = await client.request("GET", f"http://localhost:{port}/echo")
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/json"
            assert httpx.Response(200, content=resp.content).json()["host"] == f"localhost:{port}"

            # Same-origin redirect keeps credentials; a cross-origin one (other host name) drops them.
            resp = await client.request(
                "GET", f"{base}/redirect?to=/echo", headers={"Authorization": "Bearer s3cret", "X-Key": "k"}
            )
            echoed = httpx.Response(200, content=resp.content).json()["headers"]
            assert echoed["authorization"] == "Bearer s3cret"
            assert resp.redirects == [f"{base}/echo"]
            resp = await client.request(
                "GET",
                f"{base}/redirect?to=http://localhost:{port}/echo",
                headers={"Authorization": "Bearer s3cret", "X-Key": "k", "Accept": "application/json"},
            )
            echoed = httpx.Response(200, content=resp.content).json()["headers"]
            assert "authorization" not in echoed and "x-key" not in echoed
            assert echoed["accept"] == "application/json"

            # 303 after POST becomes a GET without the body.
            resp = await client.request("POST", f"{base}/redirect?to=/echo&code=303", json={"a": 1})
            assert resp.status_code == 200 and "body" not in resp.content.decode()

            # 307 keeps method and body.
            resp = await client.request("POST", f"{base}/redirect?to=/echo&code=307", json={"a": 1})
            assert httpx.Response(200, content=resp.content).json()["body"] == '{"a":1}'

            with pytest.raises(EgressDenied) as err:
                await client.request("GET", f"{base}/loop")
            assert err.value.rule == "redirects"

            # A redirect to a forbidden address is refused at that hop.
            with pytest.raises(EgressDenied) as err:
                await client.request("GET", f"{base}/redirect?to=http://169.254.169.254/latest/meta-data")
            assert err.value.rule == "metadata"
            with pytest.raises(EgressDenied) as err:
                await client.request("GET", f"{base}/redirect?to=file:///etc/passwd")
            assert err.value.rule == "scheme"

            # 503, 503, then 200: retried for GET; never retried for POST.
            resp = await client.request("GET", f"{base}/flaky")
            assert resp.status_code == 200 and app.state.counters["flaky"] == 3
            resp = await client.request("POST", f"{base}/flaky")
            assert resp.status_code == 503 and app.state.counters["flaky_post"] == 1

            capped = OutboundLimits(max_response_bytes=1000)
            resp = await client.request("GET", f"{base}/big", limits=capped)
            assert resp.truncated and len(resp.content) == 1000

            with pytest.raises(EgressDenied):
                await client.request("GET", f"{base}/echo", headers={"X-Evil": "a\r\nInjected: 1"})
        finally:
            await client.aclose()


def test_only_public_httpx_and_httpcore_names() -> None:
    """executor/net.py must not reach into httpx's or httpcore's private modules or attributes."""
    import ast
    import inspect

    import executor.net as net

    tree = ast.parse(inspect.getsource(net))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not any(part.startswith("_") for part in alias.name.split(".")), alias.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("httpx", "httpcore"):
                private = node.attr.startswith("_") and not node.attr.endswith("__")
                assert not private, f"{node.value.id}.{node.attr}"
        if isinstance(node, ast.Attribute) and node.attr == "_pool":
            # Only our own transport's pool; never an httpx transport's.
            assert isinstance(node.value, ast.Name) and node.value.id == "self"
    assert not issubclass(net.GuardedTransport, httpx.AsyncHTTPTransport)


class _Recorder(httpcore.AsyncNetworkBackend):
    """An inner backend that records what it is asked to dial, and the TLS name, then stops the request."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.sni: list[str | None] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        self.dialled.append((host, port))
        recorder = self

        class Stream(httpcore.AsyncNetworkStream):
            async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
                return b""

            async def write(self, buffer: bytes, timeout: float | None = None) -> None:
                return None

            async def aclose(self) -> None:
                return None

            async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                                timeout: float | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
                recorder.sni.append(server_hostname)
                raise httpcore.ConnectError("recorded; stopping here")

        return Stream()

    async def sleep(self, seconds: float) -> None:
        return None


async def test_the_checked_address_is_dialled_and_tls_keeps_the_name() -> None:
    inner = _Recorder()
    backend = GuardedBackend(EgressPolicy.from_entries(["localhost"]), inner=inner)
    pool = httpcore.AsyncConnectionPool(network_backend=backend, ssl_context=httpx.create_ssl_context())
    async with pool:
        with pytest.raises(httpcore.ConnectError, match="recorded"):
            await pool.request("GET", "https://localhost:8443/x")
    assert inner.dialled[0] in (("127.0.0.1", 8443), ("::1", 8443))
    assert inner.sni == ["localhost"]
    # A forbidden name is refused before the inner backend is asked for anything.
    inner.dialled.clear()
    refusing = httpcore.AsyncConnectionPool(network_backend=GuardedBackend(EgressPolicy(), inner=inner))
    async with refusing:
        with pytest.raises(EgressDenied):
            await refusing.request("GET", "http://localhost:8080/")
    assert inner.dialled == []


def test_unknown_charset_falls_back_to_utf8() -> None:
    for ctype in ("application/json; charset=x-unknown", "text/plain; charset=base64", 'text/plain; charset="x"'):
        resp = OutboundResponse(200, httpx.Headers({"content-type": ctype}), "héllo \xff".encode(), "http://h/")
        assert resp.text() == "héllo ÿ"
    resp = OutboundResponse(200, httpx.Headers({"content-type": "text/plain; charset=latin-1"}), b"\xe9", "http://h/")
    assert resp.text() == "é"


@pytest.mark.parametrize(
    "host", ["0177.0.0.1", "0x7f.1", "0x7f000001", "2130706433", "127.1", "127.0.0.01", "1.2.3.4.5", "a.b.0x1"]
)
def test_non_standard_ipv4_hosts_are_refused(host: str) -> None:
    assert numeric_host_problem(host) is not None
    with pytest.raises(EgressDenied) as err:
        parse_url(f"http://{host}/x")
    assert err.value.rule in ("ip-literal", "url")


@pytest.mark.parametrize("host", ["127.0.0.1", "example.com", "0x7f.example.com", "[::1]", "10.0.0.1.", "a1"])
def test_ordinary_hosts_pass(host: str) -> None:
    assert numeric_host_problem(host) is None


async def test_bad_urls_and_redirect_targets_are_refused_by_name() -> None:
    app = _app()
    async with serve(app) as base:
        client = OutboundClient(EgressPolicy.from_entries(["127.0.0.1"]), LIMITS)
        try:
            for url in ("http://0177.0.0.1/", "http://2130706433/", "http://h:99999999/"):
                with pytest.raises(EgressDenied):
                    await client.request("GET", url)
            with pytest.raises(EgressDenied) as err:
                await client.request("GET", f"{base}/redirect?to=http://0x7f.1/")
            assert err.value.rule == "ip-literal"
        finally:
            await client.aclose()


def test_redact() -> None:
    assert redact("https://u:p@h.example/spec.json?api_key=s3cret&x=1#frag") == (
        "https://h.example/spec.json?api_key=***&x=***#***"
    )
    assert redact("http://h/a") == "http://h/a"
    assert "s3cret" not in redact("http://h/?s3cret")
