"""The outbound policy: address classes, allow-list, pinned connections, redirects, retries, caps."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from executor.net import (
    EgressDenied,
    EgressPolicy,
    OutboundClient,
    OutboundLimits,
    check_header,
    check_path_value,
    forbidden_reason,
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
