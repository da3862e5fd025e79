"""Issue 12's tool-server defects, each end to end over real HTTP on loopback: a 4xx naming the problem where
there was a 500, answers bounded as encoded, and spec URLs (which may carry a key) redacted."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tests.test_tool_servers import conn, running_service, tool_server_app
from tests.toolserver_helpers import serve

SECRET = "q-secret-77"
ADMIN = "admin-key-1"
USER = "user-key-1"
EVERYONE = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]


def _spec(paths: dict[str, Any]) -> str:
    return json.dumps({"openapi": "3.0.0", "info": {"title": "x", "version": "1"}, "paths": paths})


def _get(operation_id: str, *path_params: str) -> dict[str, Any]:
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in path_params]
    return {"get": {"operationId": operation_id, "parameters": params}}


def _inline(base: str, deep: str) -> str:
    """A connection with an inline spec holding ``deep`` (raw JSON text), as a request body."""
    return '{"spec_type": "json", "url": "' + base + '", "spec": {"openapi": "3.0.0", "x": ' + deep + "}}"


def _saved(body: str) -> str:
    return '{"TOOL_SERVER_CONNECTIONS": [' + body + "]}"


def _odd_server() -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.get("/charset")
    async def charset() -> Response:
        return Response("héllo".encode(), media_type="text/plain; charset=x-unknown")

    @app.get("/json-charset")
    async def json_charset() -> Response:
        return Response(b'{"a": "b"}', media_type="application/json; charset=x-unknown")

    @app.get("/nuls")
    async def nuls() -> Response:
        # 4 MiB of NUL bytes, gzip-compressed to a few KiB; each one is six bytes ("\u0000") once in JSON.
        body = gzip.compress(b"\0" * (4 << 20))
        return Response(body, media_type="text/plain", headers={"Content-Encoding": "gzip"})

    @app.get("/nuls-json")
    async def nuls_json() -> Response:
        body = gzip.compress(json.dumps({"k": "\0" * (2 << 20)}).encode())
        return Response(body, media_type="application/json", headers={"Content-Encoding": "gzip"})

    @app.get("/deep")
    async def deep() -> Response:
        return Response("[" * 5000 + "]" * 5000, media_type="application/json")

    @app.get("/{rest:path}")
    async def anything(rest: str, request: Request) -> dict[str, Any]:
        return {"path": request.scope["raw_path"].decode()}

    return app


async def test_non_standard_ipv4_hosts_are_a_400_naming_the_url(tmp_path: Path) -> None:
    async with running_service(tmp_path) as client:
        for host in ("http://0177.0.0.1", "http://0x7f.1", "http://2130706433"):
            resp = await client.post("/api/v1/configs/tool_servers/verify", json=conn(host))
            assert resp.status_code == 400, (host, resp.text)
            assert resp.json()["error"] == "ambiguous_host" and resp.json()["field"] == "url"
            assert "127.0.0.1" in resp.json()["detail"]
            resp = await client.post(
                "/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [conn(host, info={"id": "o"})]}
            )
            assert resp.status_code == 400, (host, resp.text)
            assert resp.json()["field"] == "TOOL_SERVER_CONNECTIONS[0].url"
            assert (await client.get("/api/v1/tool_servers")).status_code == 200
        # A spec path that is a full URL is checked the same way.
        resp = await client.post(
            "/api/v1/configs/tool_servers/verify", json=conn("http://127.0.0.1", path="http://0177.1/spec.json")
        )
        assert resp.status_code == 400 and resp.json()["field"] == "path", resp.text


async def test_a_saved_or_environment_connection_with_such_a_host_is_skipped(tmp_path: Path) -> None:
    conns = [conn("http://0177.0.0.1", info={"id": "octal"}), conn("http://127.0.0.1:1", info={"id": "ok"})]
    async with running_service(tmp_path, tool_server_connections=conns) as client:
        resp = await client.get("/api/v1/tool_servers")
        assert resp.status_code == 200 and [s["id"] for s in resp.json()] == ["ok"]


async def test_path_parameters_cannot_name_another_server(tmp_path: Path) -> None:
    async with serve(_odd_server()) as base:
        paths = {"/items/{id}": _get("item", "id"), "{target}": _get("bare", "target")}
        conns = [{"url": base, "spec_type": "json", "spec": _spec(paths), "auth_type": "none", "info": {"id": "t"}}]
        async with running_service(tmp_path, tool_server_connections=conns) as client:
            for op, name in (("item", "id"), ("bare", "target")):
                for value in ("http://evil/", "https://evil.example/x", "file:///etc/passwd"):
                    resp = await client.post(f"/api/v1/tool_servers/t/call/{op}", json={"arguments": {name: value}})
                    assert resp.status_code == 400, (op, value, resp.text)
                    assert resp.json()["error"] == "path_absolute_url" and resp.json()["field"] == name
            # A spec path without a leading "/" still lands under the connection's URL, on its host.
            resp = await client.post("/api/v1/tool_servers/t/call/bare", json={"arguments": {"target": "x:y@z"}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"] == {"path": "/x%3Ay%40z"}


async def test_deep_json_specs_are_a_400_naming_the_problem(tmp_path: Path, upstream: tuple[str, FastAPI]) -> None:
    base, _ = upstream
    async with running_service(tmp_path) as client:
        for depth in (100_000, 3000):
            for deep in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
                body = _inline(base, deep)
                for path, content in (("/verify", body), ("", _saved(body))):
                    resp = await client.post(
                        f"/api/v1/configs/tool_servers{path}",
                        content=content,
                        headers={"content-type": "application/json"},
                    )
                    assert resp.status_code == 400, resp.text
                    assert resp.json()["error"] == "body_too_deep" and resp.json()["field"] == "body"
        # Deep enough to break the encoders, shallow enough for the parser: named by its field.
        deep = "[" * 500 + "]" * 500
        resp = await client.post(
            "/api/v1/configs/tool_servers",
            content=_saved(_inline(base, deep)),
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "spec_too_deep"
        assert resp.json()["field"] == "TOOL_SERVER_CONNECTIONS[0].spec"
        extra = {"url": base, "path": "spec.json", "auth_type": "none", "x-extra": json.loads(deep)}
        resp = await client.post("/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [extra]})
        assert resp.status_code == 400 and resp.json()["field"] == "TOOL_SERVER_CONNECTIONS[0].x-extra", resp.text
        # A string spec of the same depth was already refused; it stays so.
        resp = await client.post(
            "/api/v1/configs/tool_servers/verify",
            json={"spec_type": "json", "spec": "[" * 100_000 + "]" * 100_000, "url": base},
        )
        assert resp.status_code == 400 and resp.json()["error"] == "spec_too_deep"


async def test_answers_in_an_unknown_charset_decode_as_utf8(tmp_path: Path) -> None:
    async with serve(_odd_server()) as base:
        paths = {"/charset": _get("charset"), "/json-charset": _get("jsonCharset")}
        conns = [{"url": base, "spec_type": "json", "spec": _spec(paths), "auth_type": "none", "info": {"id": "t"}}]
        async with running_service(tmp_path, tool_server_connections=conns) as client:
            resp = await client.post("/api/v1/tool_servers/t/call/charset", json={})
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"] == "héllo"
            resp = await client.post("/api/v1/tool_servers/t/call/jsonCharset", json={})
            assert resp.status_code == 200 and resp.json()["result"] == {"a": "b"}


async def test_what_a_call_returns_is_bounded_as_encoded(tmp_path: Path) -> None:
    cap = 1 << 20
    async with serve(_odd_server()) as base:
        paths = {"/nuls": _get("nuls"), "/nuls-json": _get("nulsJson"), "/deep": _get("deep")}
        conns = [{"url": base, "spec_type": "json", "spec": _spec(paths), "auth_type": "none", "info": {"id": "t"}}]
        async with running_service(
            tmp_path, tool_server_connections=conns, tool_server_max_response_bytes=cap
        ) as client:
            for op in ("nuls", "nulsJson"):
                resp = await client.post(f"/api/v1/tool_servers/t/call/{op}", json={})
                assert resp.status_code == 200
                assert len(resp.content) <= 2 * cap + 4096, (op, len(resp.content))
                body = resp.json()
                assert body["truncated"] is True and body["status"] == "ok"
                assert isinstance(body["result"], str) and set(body["result"]) <= set('\0\\u0"k:{ ')
            # Nested past what the encoders survive: kept as text instead of a 500.
            resp = await client.post("/api/v1/tool_servers/t/call/deep", json={})
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"].startswith("[[[")


async def test_spec_urls_are_redacted_for_everyone_but_admins(
    tmp_path: Path, upstream: tuple[str, FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = upstream
    for name in ("executor", "httpx", "httpcore", "uvicorn", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    grants = {"access_grants": EVERYONE}
    conns = [
        conn(base, path=f"spec.json?api_key={SECRET}", info={"id": "ok"}, config=grants),
        conn(f"http://127.0.0.1:1/x?token={SECRET}", info={"id": "down"}, config=grants),
        conn(base, path=f"boom?key={SECRET}", info={"id": "bad"}, config=grants),
    ]
    async with running_service(
        tmp_path, tool_server_connections=conns, api_keys=[USER], admin_api_keys=[ADMIN]
    ) as client:
        user = {"Authorization": f"Bearer {USER}"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        listing = await client.get("/api/v1/tool_servers", headers=user)
        assert listing.status_code == 200, listing.text
        by_id = {s["id"]: s for s in listing.json()}
        assert by_id["ok"]["status"] == "ok"
        assert by_id["down"]["status"] == "error" and by_id["bad"]["status"] == "error"
        assert by_id["down"]["url"] == "http://127.0.0.1:1/x?token=***"
        assert "127.0.0.1:1/x?token=***" in by_id["down"]["error"]["message"]
        assert "key=***" in by_id["bad"]["error"]["message"]
        assert SECRET not in listing.text
        for sid in ("ok", "down", "bad"):
            resp = await client.get(f"/api/v1/tool_servers/{sid}/specs", headers=user)
            assert SECRET not in resp.text, resp.text
        verify = await client.post(
            "/api/v1/configs/tool_servers/verify", json=conn(f"http://127.0.0.1:1/?k={SECRET}"), headers=admin
        )
        assert verify.status_code == 400 and SECRET not in verify.text
        # An admin still sees the configured URL where it is shown to admins only.
        listing = await client.get("/api/v1/tool_servers", headers=admin)
        assert {s["id"]: s for s in listing.json()}["down"]["url"] == f"http://127.0.0.1:1/x?token={SECRET}"
    assert SECRET not in caplog.text


async def test_token_required_is_still_a_401_naming_the_header(tmp_path: Path, upstream: tuple[str, FastAPI]) -> None:
    base, _ = upstream
    async with running_service(tmp_path, tool_server_connections=[conn(base, auth_type="session")]) as client:
        resp = await client.post("/api/v1/tool_servers/0/call/secure", json={})
        assert resp.status_code == 401 and resp.json() == {
            "detail": "tool server auth_type 'session' needs the caller's token in X-Tool-Server-Token",
            "error": "token_required",
            "field": "X-Tool-Server-Token",
        }


@pytest.fixture
async def upstream() -> Any:
    app = tool_server_app()
    async with serve(app) as base:
        yield base, app


def test_httpx_is_used_only_through_public_names() -> None:
    # The outbound client must still speak httpx's types to its callers.
    from executor.net import GuardedTransport

    assert issubclass(GuardedTransport, httpx.AsyncBaseTransport)
