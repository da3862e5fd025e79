"""Tool servers end to end: real FastAPI tool servers on loopback, the service over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import yaml
from fastapi import Cookie, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel

from executor.app import create_app
from executor.openapi.toollist import cut
from executor.settings import Settings
from tests.toolserver_helpers import counting_tcp_server, serve

KEY = "k-super-secret-123"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class Color(StrEnum):
    red = "red"
    blue = "blue"


class Tag(BaseModel):
    label: str


class Item(BaseModel):
    name: str
    tags: list[Tag] = []


def tool_server_app() -> FastAPI:
    """A tool server exercising every parameter location, auth, and misbehaviour the tests need."""
    app = FastAPI(title="Test tools", openapi_url=None)
    state: dict[str, Any] = {"spec_fetches": 0, "not_modified": 0, "flaky": 0}
    app.state.counters = state

    def spec_doc() -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        return get_openapi(title="Test tools", version="1", routes=app.routes)

    @app.get("/spec.json", include_in_schema=False)
    async def spec_json(request: Request) -> Response:
        state["spec_fetches"] += 1
        if request.headers.get("if-none-match") == '"v1"':
            state["not_modified"] += 1
            return Response(status_code=304)
        return JSONResponse(spec_doc(), headers={"ETag": '"v1"'})

    @app.get("/spec.yaml", include_in_schema=False)
    async def spec_yaml() -> Response:
        return PlainTextResponse(yaml.safe_dump(spec_doc()), media_type="application/yaml")

    @app.get("/private/spec.json", include_in_schema=False)
    async def private_spec(authorization: Annotated[str | None, Header()] = None) -> Response:
        if authorization != f"Bearer {KEY}":
            return JSONResponse({"detail": "no"}, status_code=401)
        return JSONResponse(spec_doc())

    @app.get("/items/{item_id}", operation_id="getItem")
    async def get_item(
        item_id: str,
        color: Color,
        request: Request,
        q: str | None = None,
        x_trace: Annotated[str | None, Header()] = None,
        sid: Annotated[str | None, Cookie()] = None,
    ) -> dict[str, Any]:
        return {
            "item_id": item_id,
            "color": color,
            "q": q,
            "x_trace": x_trace,
            "sid": sid,
            "query": str(request.url.query),
            "raw_path": request.scope["raw_path"].decode(),
        }

    @app.post("/items", operation_id="createItem")
    async def create_item(item: Item, request: Request) -> dict[str, Any]:
        return {"item": item.model_dump(), "content_type": request.headers.get("content-type")}

    @app.delete("/items/{item_id}", operation_id="deleteItem")
    async def delete_item(item_id: str, request: Request) -> dict[str, Any]:
        return {"deleted": item_id, "body": (await request.body()).decode()}

    @app.get("/headers", operation_id="whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {k: v for k, v in request.headers.items()}

    @app.get("/secure", operation_id="secure")
    async def secure(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        if authorization != f"Bearer {KEY}":
            raise HTTPException(401, "bad key")
        return {"ok": True}

    @app.get("/slow", operation_id="slow")
    async def slow() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    @app.get("/flaky", operation_id="flaky")
    async def flaky() -> Response:
        state["flaky"] += 1
        if state["flaky"] == 1:
            return PlainTextResponse("try again", status_code=503)
        return JSONResponse({"attempt": state["flaky"]})

    @app.get("/boom", operation_id="boom")
    async def boom() -> Response:
        return PlainTextResponse("kaput", status_code=500)

    @app.get("/huge", operation_id="huge")
    async def huge() -> Response:
        return PlainTextResponse("y" * 300_000)

    @app.get("/image", operation_id="image")
    async def image() -> Response:
        return Response(PNG, media_type="image/png")

    @app.get("/report", operation_id="report")
    async def report() -> Response:
        return Response(
            b"%PDF-1.4", media_type="application/pdf", headers={"Content-Disposition": 'attachment; filename="r.pdf"'}
        )

    @app.get("/page", operation_id="page")
    async def page() -> Response:
        return HTMLResponse("<b>hi</b>", headers={"Content-Disposition": "inline"})

    @app.get("/text", operation_id="text")
    async def text() -> Response:
        return PlainTextResponse("plain words")

    @app.get("/go-home", operation_id="goHome")
    async def go_home() -> Response:
        return RedirectResponse("/text")

    @app.get("/go-metadata", operation_id="goMetadata")
    async def go_metadata() -> Response:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/")

    return app


# The session-wide matplotlib font cache of conftest, so each service start does not rebuild it.
_shared: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _shared_cache(cache_dir: Path) -> None:
    _shared["cache_dir"] = cache_dir


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    base_settings: dict[str, Any] = {
        "data_dir": tmp_path,
        "cache_dir": _shared.get("cache_dir"),
        "pool_size": 0,
        "egress_allowlist": ["127.0.0.1"],
        # Room for a loaded CI machine: a loopback spec fetch once took over 2 s there (the slow call waits it out).
        "tool_server_timeout_s": 5,
        "tool_server_retry_backoff_s": 0.01,
        "tool_server_max_response_bytes": 1 << 16,
    }
    settings = Settings(_env_file=None, **{**base_settings, **overrides})  # type: ignore[call-arg]
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base, timeout=20) as client:
        yield client


def conn(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "openapi", "url": url, "path": "spec.json", "auth_type": "none", **extra}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, FastAPI]]:
    app = tool_server_app()
    async with serve(app) as base:
        yield base, app


async def call(client: httpx.AsyncClient, sid: str, op: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
    resp = await client.post(f"/api/v1/tool_servers/{sid}/call/{op}", json={"arguments": args or {}, **kw})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_connections_config_masking_and_persistence(
    tmp_path: Path, upstream: tuple[str, FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = upstream
    for name in ("executor", "httpx", "httpcore", "uvicorn", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    env_conn = conn(base, auth_type="bearer", key=KEY, info={"id": "env", "name": "From env"})
    async with running_service(tmp_path, tool_server_connections=[env_conn]) as client:
        got = (await client.get("/api/v1/configs/tool_servers")).json()
        (item,) = got["TOOL_SERVER_CONNECTIONS"]
        assert item["key"] == "********" and item["info"]["id"] == "env"

        # Save with the mask echoed back: the stored key survives; secret-looking headers are masked too.
        item["headers"] = {"X-Api-Key": "hk-secret", "X-User": "{{USER_ID}}"}
        second = conn(base, info={"id": "second"})
        resp = await client.post("/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [item, second]})
        assert resp.status_code == 200, resp.text
        saved = resp.json()["TOOL_SERVER_CONNECTIONS"]
        assert saved[0]["key"] == "********"
        assert saved[0]["headers"] == {"X-Api-Key": "********", "X-User": "{{USER_ID}}"}
        assert KEY not in resp.text and "hk-secret" not in resp.text
        assert (await call(client, "env", "secure"))["result"] == {"ok": True}

        for bad, field in [
            ({"url": "ftp://x"}, "url"),
            ({"url": "http://u:p@h"}, "url"),
            ({"url": base, "auth_type": "magic"}, "auth_type"),
            ({"url": base, "headers": {"X-A": "a\r\nB: c"}}, "headers"),
            ({"spec_type": "json"}, None),
            ({"url": base, "info": {"id": "bad id!"}}, "info"),
        ]:
            resp = await client.post("/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [bad]})
            assert resp.status_code == 422, (bad, resp.text)
            loc = resp.json()["detail"][0]["loc"]
            assert loc[:3] == ["body", "TOOL_SERVER_CONNECTIONS", 0], loc
            if field:
                assert field in loc
        resp = await client.post("/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [second, second]})
        assert resp.status_code == 422 and resp.json()["field"] == "TOOL_SERVER_CONNECTIONS[1].info.id"

    # Saved connections win over the environment after a restart.
    async with running_service(tmp_path, tool_server_connections=[env_conn]) as client:
        ids = [
            c["info"]["id"]
            for c in (await client.get("/api/v1/configs/tool_servers")).json()["TOOL_SERVER_CONNECTIONS"]
        ]
        assert ids == ["env", "second"]
    assert KEY not in caplog.text and "hk-secret" not in caplog.text


async def test_verify(tmp_path: Path, upstream: tuple[str, FastAPI]) -> None:
    base, _ = upstream
    async with running_service(tmp_path) as client:
        ok = await client.post("/api/v1/configs/tool_servers/verify", json=conn(base))
        assert ok.status_code == 200 and ok.json()["operations"] >= 10
        yml = await client.post("/api/v1/configs/tool_servers/verify", json=conn(base, path="spec.yaml"))
        assert yml.status_code == 200, yml.text
        inline = await client.post(
            "/api/v1/configs/tool_servers/verify",
            json={"spec_type": "json", "spec": "openapi: 3.1.0\npaths: {}\n", "url": base},
        )
        assert inline.status_code == 400 and inline.json()["error"] == "no_operations"
        cases = [
            (conn(base, path="private/spec.json"), "auth_refused"),
            (conn(base, path="private/spec.json", auth_type="bearer", key=KEY), None),
            (conn(base, path="boom"), "http_error"),
            (conn(base, path="text"), "not_openapi"),
            (conn(base, path="/page"), "not_openapi"),
            (conn("http://127.0.0.1:1"), "unreachable"),
            (conn("http://10.0.0.1"), "egress_denied"),
            ({"spec_type": "json", "spec": '{"swagger": "2.0"}'}, "not_openapi_3"),
            ({"spec_type": "json", "spec": "{["}, "not_json_or_yaml"),
        ]
        for body, code in cases:
            resp = await client.post("/api/v1/configs/tool_servers/verify", json=body)
            if code is None:
                assert resp.status_code == 200, resp.text
            else:
                assert resp.status_code == 400, (body, resp.text)
                assert resp.json()["error"] == code, (body, resp.text)
                assert resp.json()["field"] in ("url", "spec")
        assert KEY not in resp.text


async def test_calls(tmp_path: Path, upstream: tuple[str, FastAPI]) -> None:
    base, app = upstream
    conns = [
        conn(base, info={"id": "t"}, headers={"X-User": "{{USER_ID}}", "X-Chat": "{{CHAT_ID}}"}),
        conn(base, info={"id": "bearer"}, auth_type="bearer", key=KEY),
        conn(base, info={"id": "sess"}, auth_type="session"),
        conn(base, info={"id": "oauth"}, auth_type="system_oauth"),
        conn(base, path="spec.yaml", info={"id": "yml"}),
        conn("http://10.255.0.1:9", info={"id": "down"}),
    ]
    async with running_service(tmp_path, tool_server_connections=conns, tool_server_spec_ttl_s=0) as client:
        # Listing: the failing server is reported beside the others.
        listing = {s["id"]: s for s in (await client.get("/api/v1/tool_servers")).json()}
        assert listing["t"]["status"] == "ok" and listing["yml"]["status"] == "ok"
        assert listing["down"]["status"] == "error" and listing["down"]["error"]["code"] == "egress_denied"
        # TTL 0: the next listing revalidates with If-None-Match and gets 304.
        assert app.state.counters["not_modified"] == 0
        await client.get("/api/v1/tool_servers")
        assert app.state.counters["not_modified"] >= 1

        specs = (await client.get("/api/v1/tool_servers/t/specs")).json()["specs"]
        by_name = {s["name"]: s for s in specs}
        assert by_name["getItem"]["parameters"]["properties"]["color"]["enum"] == ["red", "blue"]  # $ref
        assert by_name["createItem"]["parameters"]["properties"]["tags"]["items"]["properties"]["label"]
        assert (await client.get("/api/v1/tool_servers/down/specs")).status_code == 502
        assert (await client.get("/api/v1/tool_servers/nope/specs")).status_code == 404

        r = await call(
            client,
            "t",
            "getItem",
            {"item_id": "a b&c?", "color": "red", "q": "", "x-trace": "tr1", "sid": "s1", "junk": 1},
        )
        assert r["status"] == "ok" and r["http_status"] == 200, r
        assert r["result"]["item_id"] == "a b&c?" and r["result"]["raw_path"] == "/items/a%20b%26c%3F"
        assert r["result"]["query"] == "color=red"  # empty optional q dropped, junk filtered
        assert r["result"]["x_trace"] == "tr1" and r["result"]["sid"] == "s1"

        r = await call(client, "t", "createItem", {"name": "n", "tags": [{"label": "x"}]})
        assert r["result"] == {"item": {"name": "n", "tags": [{"label": "x"}]}, "content_type": "application/json"}
        r = await call(client, "t", "deleteItem", {"item_id": "7"})
        assert r["result"] == {"deleted": "7", "body": "{}"}

        r = await call(client, "t", "whoami", user={"id": "u-1"}, metadata={"chat_id": "c-9"})
        assert r["result"]["x-user"] == "u-1" and r["result"]["x-chat"] == "c-9"
        assert "content-type" not in r["result"]  # no body, no Content-Type
        assert "authorization" not in r["result"]

        assert (await call(client, "bearer", "secure"))["result"] == {"ok": True}
        denied = await call(client, "t", "secure")
        assert denied["status"] == "error" and denied["http_status"] == 401
        assert denied["result"] == {"error": 'HTTP error 401: {"detail":"bad key"}'}
        for sid in ("sess", "oauth"):
            resp = await client.post(
                f"/api/v1/tool_servers/{sid}/call/secure", json={}, headers={"X-Tool-Server-Token": KEY}
            )
            assert resp.json()["result"] == {"ok": True}, resp.text
            resp = await client.post(f"/api/v1/tool_servers/{sid}/call/secure", json={})
            assert resp.status_code == 401 and resp.json()["field"] == "X-Tool-Server-Token"
        assert (await call(client, "yml", "text"))["result"] == "plain words"

        # Bad input: 4xx naming the field.
        for args, field in [
            ({"color": "red"}, "item_id"),
            ({"item_id": "..", "color": "red"}, "item_id"),
            ({"item_id": "1", "color": "red", "x-trace": "a\r\nX-Evil: 1"}, "x-trace"),
        ]:
            resp = await client.post("/api/v1/tool_servers/t/call/getItem", json={"arguments": args})
            assert resp.status_code == 422 and resp.json()["field"] == field, resp.text
        resp = await client.post("/api/v1/tool_servers/t/call/nope", json={})
        assert resp.status_code == 404 and resp.json()["error"] == "operation_not_found"

        r = await call(client, "t", "slow")
        assert r["status"] == "error" and r["error"]["name"] == "Timeout"
        r = await call(client, "t", "flaky")
        assert r["status"] == "ok" and r["result"] == {"attempt": 2}
        r = await call(client, "t", "boom")
        assert r["status"] == "error" and r["http_status"] == 500
        assert r["error"] == {"name": "HTTPError", "value": "HTTP error 500: kaput"}
        r = await call(client, "t", "huge")
        assert r["truncated"] is True and len(r["result"]) == 1 << 16
        r = await call(client, "t", "image")
        assert r["outputs"][0]["type"] == "image" and r["outputs"][0]["mime_type"] == "image/png"
        assert base64.b64decode(r["outputs"][0]["data"]) == PNG
        r = await call(client, "t", "report")
        assert r["outputs"][0]["type"] == "file" and r["outputs"][0]["name"] == "r.pdf"
        r = await call(client, "t", "page")
        assert r["outputs"][0] == {
            "type": "html",
            "mime_type": "text/html",
            "data": "<b>hi</b>",
            "name": None,
            "url": None,
        }
        assert (await call(client, "t", "goHome"))["result"] == "plain words"
        r = await call(client, "t", "goMetadata")
        assert r["status"] == "error" and r["error"]["name"] == "EgressDenied" and "metadata" in r["error"]["value"]

        # The unified list: bare names, prefixed by the server id only on a collision, as Open WebUI does.
        unified = (await client.get("/api/v1/tools/specs")).json()
        names = [f["name"] for f in unified if f["operation_id"] == "getItem"]
        assert names[:3] == ["getItem", "bearer_getItem", "sess_getItem"], names
        assert all(f["spec"]["name"] == f["name"] and len(f["name"]) <= 64 for f in unified)
        assert not any(f["server_id"] == "down" for f in unified)
    long = cut("s" * 40 + "_operation_with_a_long_name_x")
    assert len(long) == 64 and long[55] == "_" and long.startswith("s" * 40)


async def test_refused_without_allowlist(tmp_path: Path) -> None:
    async with counting_tcp_server() as (port, count):
        spec = {
            "openapi": "3.0.0",
            "info": {"title": "x", "version": "1"},
            "paths": {"/a": {"get": {"operationId": "a"}}},
        }
        conns = [
            conn(f"http://127.0.0.1:{port}", info={"id": "url"}),
            {
                "url": f"http://127.0.0.1:{port}",
                "spec_type": "json",
                "spec": json.dumps(spec),
                "info": {"id": "inline"},
            },
        ]
        async with running_service(tmp_path, egress_allowlist=[], tool_server_connections=conns) as client:
            listing = {s["id"]: s for s in (await client.get("/api/v1/tool_servers")).json()}
            assert listing["url"]["error"]["code"] == "egress_denied"
            assert "loopback" in listing["url"]["error"]["message"]
            r = await call(client, "inline", "a")
            assert r["status"] == "error" and r["error"]["name"] == "EgressDenied"
            assert "EXECUTOR_EGRESS_ALLOWLIST" in r["error"]["value"]
        assert count[0] == 0


async def test_rate_limits(tmp_path: Path, upstream: tuple[str, FastAPI]) -> None:
    base, _ = upstream
    conns = [conn(base, info={"id": "a"}), conn(base, info={"id": "b"})]
    async with running_service(
        tmp_path,
        tool_server_connections=conns,
        tool_server_rate_limit_per_connection=2,
        tool_server_rate_limit_per_principal=3,
    ) as client:
        for _ in range(2):
            await call(client, "a", "text")
        resp = await client.post("/api/v1/tool_servers/a/call/text", json={})
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"] == "rate_limited"
        await call(client, "b", "text")  # the refused call did not use the principal's budget
        resp = await client.post("/api/v1/tool_servers/b/call/text", json={})
        assert resp.status_code == 429 and "API key" in resp.json()["detail"]
