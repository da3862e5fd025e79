"""Who is calling, end to end: admin and user keys, end users behind one chat-backend key, grants, the audit log.

Everything runs through the real service on loopback (uvicorn in-process) with real tool servers on loopback;
the session tests start real jailed kernels. Keys: one admin, two plain user keys, one Open WebUI key that may
forward identity, and two end users (alice, bob) behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from executor.access.keys import key_id
from executor.app import create_app
from executor.openapi.models import MASK
from executor.settings import Settings
from tests.test_tool_servers import KEY as SECRET
from tests.test_tool_servers import conn, tool_server_app
from tests.toolserver_helpers import counting_tcp_server, serve

ADMIN = "admin-key-0001"
USER_A = "user-key-aaaa"
USER_B = "user-key-bbbb"
OWUI = "owui-key-0001"
DATA = Path(__file__).parent / "data" / "owui"
PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]


def alice(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OWUI}", "X-OpenWebUI-User-Id": "alice", "X-OpenWebUI-User-Name": "Alice",
            **extra}  # fmt: skip


def bob(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OWUI}", "X-OpenWebUI-User-Id": "bob", **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def service(tmp_path: Path, cache_dir: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The service with the four keys (unless overridden), and a client with no credentials of its own."""
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "cache_dir": cache_dir,
        "pool_size": 0,
        "egress_allowlist": ["127.0.0.1"],
        "api_keys": [USER_A, USER_B],
        "admin_api_keys": [ADMIN],
        "forward_identity_api_keys": [OWUI],
        "tool_server_timeout_s": 5,
        "key_cache_ttl_s": 3600,  # revocations must be seen through the stamp file, not a timer
    }
    settings = Settings(_env_file=None, **{**base, **overrides})  # type: ignore[call-arg]
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def recorder() -> tuple[FastAPI, list[dict[str, Any]]]:
    """A stand-in for a host the admin never configured: it records every request (and its Authorization)."""
    app = FastAPI(openapi_url=None)
    seen: list[dict[str, Any]] = []

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def anything(path: str, request: Request) -> JSONResponse:
        seen.append({"path": "/" + path, "authorization": request.headers.get("authorization")})
        spec = {
            "openapi": "3.0.0",
            "info": {"title": "elsewhere", "version": "1"},
            "paths": {"/text": {"get": {"operationId": "text"}}},
        }
        return JSONResponse(spec)

    return app, seen


async def test_config_routes_need_admin_and_masked_secrets_stay_home(tmp_path: Path, cache_dir: Path) -> None:
    upstream = tool_server_app()
    elsewhere, seen = recorder()
    async with serve(upstream) as base, serve(elsewhere) as other, service(tmp_path, cache_dir) as client:
        saved = conn(base, auth_type="bearer", key=SECRET, info={"id": "s"}, config={"access_grants": PUBLIC})
        resp = await client.post(
            "/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [saved]}, headers=bearer(ADMIN)
        )
        assert resp.status_code == 200, resp.text
        echoed = resp.json()["TOOL_SERVER_CONNECTIONS"][0]
        assert echoed["key"] == MASK

        # A user key cannot read or replace the list, nor verify with it.
        for method, path, body in [
            ("GET", "/api/v1/configs/tool_servers", None),
            ("POST", "/api/v1/configs/tool_servers", {"TOOL_SERVER_CONNECTIONS": []}),
            ("POST", "/api/v1/configs/tool_servers/verify", echoed),
        ]:
            r = await client.request(method, path, json=body, headers=bearer(USER_A))
            assert r.status_code == 403 and r.json()["error"] == "admin_required", r.text
        # ...nor can an end user behind the chat backend's key.
        r = await client.get("/api/v1/configs/tool_servers", headers=alice())
        assert r.status_code == 403

        # The takeover: the mask echoed with another path must not carry the saved key anywhere.
        hijack = {**echoed, "path": f"{other}/x"}
        r = await client.post(
            "/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [hijack]}, headers=bearer(ADMIN)
        )
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "TOOL_SERVER_CONNECTIONS[0].key" and "path" in r.json()["detail"]
        r = await client.post("/api/v1/configs/tool_servers/verify", json=hijack, headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["field"] == "key", r.text
        for changed in ({"url": other}, {"auth_type": "session"}, {"spec_type": "json", "spec": "{}"}):
            r = await client.post("/api/v1/configs/tool_servers/verify", json={**echoed, **changed},
                                  headers=bearer(ADMIN))  # fmt: skip
            assert r.status_code == 400 and r.json()["error"] == "secret_required", (changed, r.text)
        # Nothing was lost: the saved connection still works with its key.
        r = await client.post("/api/v1/tool_servers/s/call/secure", json={}, headers=bearer(USER_A))
        assert r.json()["result"] == {"ok": True}, r.text
        # Unchanged echo keeps the key (what Open WebUI's admin page does on save).
        r = await client.post(
            "/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [echoed]}, headers=bearer(ADMIN)
        )
        assert r.status_code == 200
        assert (await client.post("/api/v1/tool_servers/s/call/secure", json={}, headers=bearer(USER_A))).json()[
            "result"
        ] == {"ok": True}

        # Even an admin's own spec path on another origin is fetched without the key.
        moved = {**saved, "path": f"{other}/spec.json"}
        r = await client.post("/api/v1/configs/tool_servers/verify", json=moved, headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        assert seen and all(s["authorization"] is None for s in seen), seen
        assert SECRET not in json.dumps(seen)

        # Users see only a masked, secret-free status.
        listing = await client.get("/api/v1/tool_servers", headers=bearer(USER_A))
        assert [s["id"] for s in listing.json()] == ["s"] and SECRET not in listing.text


async def test_calls_ignore_the_specs_servers(tmp_path: Path, cache_dir: Path) -> None:
    upstream = tool_server_app()
    async with counting_tcp_server() as (port, hits), serve(upstream) as base:
        spec = {
            "openapi": "3.0.0",
            "info": {"title": "t", "version": "1"},
            "servers": [{"url": f"http://127.0.0.1:{port}/x"}],
            "paths": {"/secure": {"get": {"operationId": "secure"}}},
        }
        c = {
            "url": base,
            "spec_type": "json",
            "spec": json.dumps(spec),
            "auth_type": "bearer",
            "key": SECRET,
            "info": {"id": "srv"},
            "config": {"access_grants": PUBLIC},
        }
        async with service(tmp_path, cache_dir, tool_server_connections=[c]) as client:
            r = await client.post("/api/v1/tool_servers/srv/call/secure", json={}, headers=bearer(USER_A))
            assert r.status_code == 200 and r.json()["result"] == {"ok": True}, r.text
        assert hits[0] == 0, "the spec's servers URL was contacted"


async def test_grants_users_groups_wildcard_and_empty(tmp_path: Path, cache_dir: Path) -> None:
    upstream = tool_server_app()

    def grant(kind: str, ident: str, permission: str = "read") -> dict[str, str]:
        return {"principal_type": kind, "principal_id": ident, "permission": permission}

    async with serve(upstream) as base:
        conns = [
            conn(base, info={"id": "public"}, config={"access_grants": PUBLIC}),
            conn(base, info={"id": "alice-only"}, config={"access_grants": [grant("user", "alice")]}),
            conn(base, info={"id": "eng"}, config={"access_grants": [grant("group", "eng")]}),
            conn(base, info={"id": "ops"}, config={"access_grants": [grant("group", "ops")]}),
            conn(base, info={"id": "write-only"}, config={"access_grants": [grant("user", "alice", "write")]}),
            conn(base, info={"id": "admins"}),
            conn(base, info={"id": "empty"}, config={"access_grants": []}),
            # The older access_control dict, converted as Open WebUI's access_control_to_grants does.
            conn(base, info={"id": "legacy-public"}, config={"access_control": None}),
            conn(base, info={"id": "legacy-private"}, config={"access_control": {}}),
            conn(base, info={"id": "legacy-bob"}, config={"access_control": {"read": {"user_ids": ["bob"]}}}),
            conn(base, info={"id": "key-a"}, config={"access_grants": [grant("user", key_id(USER_A))]}),
        ]
        async with service(tmp_path, cache_dir, tool_server_connections=conns) as client:
            r = await client.post(
                "/api/v1/groups", json={"id": "ops", "name": "Ops", "user_ids": ["bob"]}, headers=bearer(ADMIN)
            )
            assert r.status_code == 201, r.text

            async def visible(headers: dict[str, str]) -> list[str]:
                resp = await client.get("/api/v1/tool_servers", headers=headers)
                assert resp.status_code == 200, resp.text
                return [s["id"] for s in resp.json()]

            everyone = ["public", "legacy-public"]
            assert await visible(bearer(USER_B)) == everyone
            assert await visible(bearer(USER_A)) == [*everyone, "key-a"]
            assert await visible(alice()) == ["public", "alice-only", "legacy-public"]
            # bob: a group from the admin API (ops), one from Open WebUI's header (eng), a legacy user grant.
            bob_sees = ["public", "eng", "ops", "legacy-public", "legacy-bob"]
            assert await visible(bob(**{"X-OpenWebUI-User-Group-Ids": "eng,other"})) == bob_sees
            assert await visible(bearer(ADMIN)) == [c["info"]["id"] for c in conns]

            # Calls follow the same grants (404, as for anything not yours).
            assert (await client.post("/api/v1/tool_servers/alice-only/call/text", json={}, headers=alice())).json()[
                "result"
            ] == "plain words"
            for sid in ("alice-only", "admins", "empty", "write-only"):
                r = await client.post(f"/api/v1/tool_servers/{sid}/call/text", json={}, headers=bob())
                assert r.status_code == 404, (sid, r.text)
            specs = await client.get("/api/v1/tools/specs", headers=bob())
            assert {f["server_id"] for f in specs.json()} == {"public", "ops", "legacy-public", "legacy-bob"}

            # The admin sees the converted grants (access_control is gone).
            cfg = (await client.get("/api/v1/configs/tool_servers", headers=bearer(ADMIN))).json()
            by_id = {c["info"]["id"]: c["config"] for c in cfg["TOOL_SERVER_CONNECTIONS"]}
            assert by_id["legacy-public"]["access_grants"] == PUBLIC and "access_control" not in by_id["legacy-public"]
            assert by_id["legacy-private"]["access_grants"] == []
            assert by_id["legacy-bob"]["access_grants"] == [grant("user", "bob")]
            r = await client.post(
                "/api/v1/configs/tool_servers",
                json={"TOOL_SERVER_CONNECTIONS": [conn(base, config={"access_control": "everyone"})]},
                headers=bearer(ADMIN),
            )
            assert r.status_code == 422 and "access_control" in r.text


async def test_keys_api_cli_and_revocation(tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="executor")
    async with service(tmp_path, cache_dir) as client:
        assert (await client.get("/api/v1/keys", headers=bearer(USER_A))).status_code == 403
        r = await client.post("/api/v1/keys", json={"name": "ci", "role": "user"}, headers=bearer(ADMIN))
        assert r.status_code == 201, r.text
        made = r.json()
        new_key = made["key"]
        assert new_key.startswith("exk_") and made["id"] == key_id(new_key)
        assert (await client.get("/api/v1/me", headers=bearer(new_key))).json()["key_name"] == "ci"
        r = await client.post("/api/v1/keys", json={"name": "ci"}, headers=bearer(ADMIN))
        assert r.status_code == 409 and r.json()["field"] == "name"
        r = await client.post("/api/v1/keys", json={"name": "bad name!"}, headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["field"] == "name"
        listed = await client.get("/api/v1/keys", headers=bearer(ADMIN))
        assert new_key not in listed.text and ADMIN not in listed.text
        assert {k["name"] for k in listed.json() if k["source"] == "stored"} == {"ci"}
        assert (await client.delete("/api/v1/keys/ci", headers=bearer(ADMIN))).status_code == 200
        r = await client.get("/api/v1/me", headers=bearer(new_key))
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await client.delete(f"/api/v1/keys/{key_id(USER_A)}", headers=bearer(ADMIN))
        assert r.status_code == 409 and r.json()["error"] == "key_in_environment"

        # The CLI works on the same database; the running service sees its changes on the next request.
        env = {**os.environ, "EXECUTOR_DATA_DIR": str(tmp_path / "data"), "EXECUTOR_ADMIN_API_KEYS": ADMIN}
        cli = [sys.executable, "-m", "executor", "keys"]

        async def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(
                subprocess.run, [*cli, *args], env=env, capture_output=True, text=True, check=check
            )

        cli_key = (await run("create", "--name", "owui2", "--role", "admin", "--forward-identity")).stdout.strip()
        me = (await client.get("/api/v1/me", headers=bearer(cli_key))).json()
        assert me["key_name"] == "owui2" and me["role"] == "admin" and me["forward_identity"] is True
        listing = (await run("list")).stdout
        assert "owui2" in listing and cli_key not in listing and ADMIN not in listing
        await run("revoke", "owui2")
        assert (await client.get("/api/v1/me", headers=bearer(cli_key))).status_code == 401
        bad = await run("revoke", "nobody", check=False)
        assert bad.returncode == 1 and "nobody" in bad.stderr

        audit = await client.get("/api/v1/audit", params={"kind": "admin"}, headers=bearer(ADMIN))
        actions = [e["action"] for e in audit.json()]
        assert actions[:2] == ["key.revoke", "key.create"], actions
        refused = await client.get("/api/v1/audit", params={"kind": "refused"}, headers=bearer(ADMIN))
        statuses = {(e["status"], e["key_id"]) for e in refused.json()}
        assert (401, None) in statuses and (403, key_id(USER_A)) in statuses
        assert (await client.get("/api/v1/audit", headers=bearer(USER_A))).status_code == 403
        for text in (audit.text, refused.text, caplog.text):
            assert new_key not in text and cli_key not in text and USER_A not in text and ADMIN not in text


async def test_no_anonymous_admin_once_a_key_exists(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir, api_keys=[], admin_api_keys=[], forward_identity_api_keys=[]) as client:
        me = (await client.get("/api/v1/me")).json()
        assert me["id"] == "anonymous" and me["role"] == "admin"
        made = (await client.post("/api/v1/keys", json={"name": "first", "role": "admin"})).json()
        assert (await client.get("/api/v1/me")).status_code == 401
        assert (await client.delete("/api/v1/keys/first", headers=bearer(made["key"]))).status_code == 200
        # Revoking the last key does not reopen the service.
        assert (await client.get("/api/v1/me")).status_code == 401


async def test_end_users_behind_one_key_are_isolated(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with service(tmp_path, cache_dir, max_sessions_per_principal=2, max_sessions_per_key=3) as client:
        r = await client.post("/api/v1/sessions", json={}, headers=alice())
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["owner"] == f"{key_id(OWUI)}/alice"
        assert (await client.put(f"/api/v1/sessions/{sid}/files/a.txt", content=b"alice's", headers=alice())).is_success
        ran = await client.post(f"/api/v1/sessions/{sid}/executions", json={"code": "1+1"}, headers=alice())
        eid = ran.json()["id"]
        # bob, behind the same key: none of it exists for him; nor for the key without identity, nor another key.
        for headers in (bob(), bearer(OWUI), bearer(USER_A)):
            for path in (f"/{sid}", f"/{sid}/files", f"/{sid}/files/a.txt", f"/{sid}/executions/{eid}"):
                assert (await client.get(f"/api/v1/sessions{path}", headers=headers)).status_code == 404, path
            assert (await client.delete(f"/api/v1/sessions/{sid}", headers=headers)).status_code == 404
            assert (await client.get("/api/v1/sessions", headers=headers)).json() == []

        # Forged identity from a key that may not forward it: ignored (the caller is the key), logged once.
        caplog.set_level(logging.WARNING, logger="executor")
        forged = {**bearer(USER_A), "X-OpenWebUI-User-Id": "alice"}
        for _ in range(2):
            me = (await client.get("/api/v1/me", headers=forged)).json()
            assert me["id"] == key_id(USER_A) and me["end_user"] is None
            assert (await client.get(f"/api/v1/sessions/{sid}", headers=forged)).status_code == 404
        assert caplog.text.count("not marked forward_identity") == 1

        # Quotas count per end user, with a ceiling for the key.
        assert (await client.post("/api/v1/sessions", json={}, headers=alice())).status_code == 201
        r = await client.post("/api/v1/sessions", json={}, headers=alice())
        assert r.status_code == 429 and r.json()["error"] == "too_many_sessions" and r.headers["Retry-After"]
        assert (await client.post("/api/v1/sessions", json={}, headers=bob())).status_code == 201
        r = await client.post("/api/v1/sessions", json={"ttl_s": 60}, headers={**bob(), "X-OpenWebUI-User-Id": "c"})
        assert r.status_code == 429 and r.json()["error"] == "too_many_sessions_for_key", r.text

        # Admins see and end anyone's sessions; users may not ask for all.
        assert (await client.get("/api/v1/sessions", params={"all": "true"}, headers=alice())).status_code == 403
        everything = (await client.get("/api/v1/sessions", params={"all": "true"}, headers=bearer(ADMIN))).json()
        assert {s["owner"] for s in everything} == {f"{key_id(OWUI)}/alice", f"{key_id(OWUI)}/bob"}
        assert (await client.get(f"/api/v1/sessions/{sid}", headers=bearer(ADMIN))).status_code == 200
        assert (await client.delete(f"/api/v1/sessions/{sid}", headers=bearer(ADMIN))).status_code == 204
        assert (await client.get(f"/api/v1/sessions/{sid}", headers=alice())).status_code == 404


async def test_signed_identity(tmp_path: Path, cache_dir: Path) -> None:
    tokens = json.loads((DATA / "tokens.json").read_text())
    session_token = tokens["session_token"]["token"]
    forward = tokens["forward_user_jwt"]["token"]
    async with service(
        tmp_path, cache_dir, openwebui_secret_key="owui-test-secret", openwebui_forward_jwt_secret="owui-forward-secret"
    ) as client:

        async def me(headers: dict[str, str]) -> httpx.Response:
            return await client.get("/api/v1/me", headers=headers)

        # Open WebUI's auth_type session: its user's token as the bearer, our key in X-API-Key.
        r = await me({"Authorization": f"Bearer {session_token}", "X-API-Key": OWUI})
        assert r.status_code == 200, r.text
        assert r.json()["end_user"]["id"] == "user-1" and r.json()["end_user"]["verified"] is True
        assert r.json()["id"] == f"{key_id(OWUI)}/user-1"
        # FORWARD_USER_INFO_HEADER_JWT_SECRET: our key as the bearer, the user in X-OpenWebUI-User-Jwt.
        r = await me({**bearer(OWUI), "X-OpenWebUI-User-Jwt": forward})
        user = r.json()["end_user"]
        assert (user["id"], user["name"], user["email"], user["role"]) == (
            "user-2", "Zoë Example", "zoe@example.com", "user",
        )  # fmt: skip

        now = datetime.now(UTC)
        forged = jwt.encode({"sub": "admin", "role": "admin", "iss": "open-webui", "exp": now + timedelta(minutes=5)},
                            "guessed-secret", algorithm="HS256")  # fmt: skip
        unsigned = jwt.encode({"sub": "admin", "iss": "open-webui", "exp": now + timedelta(minutes=5)}, None,
                              algorithm="none")  # fmt: skip
        no_exp = jwt.encode({"sub": "x", "iss": "open-webui"}, "owui-forward-secret", algorithm="HS256")
        cases = [
            {"Authorization": f"Bearer {tokens['expired_session_token']['token']}", "X-API-Key": OWUI},
            {"Authorization": "Bearer sk-an-open-webui-api-key", "X-API-Key": OWUI},
            {**bearer(OWUI), "X-OpenWebUI-User-Jwt": forged},
            {**bearer(OWUI), "X-OpenWebUI-User-Jwt": unsigned},
            {**bearer(OWUI), "X-OpenWebUI-User-Jwt": no_exp},
            {**bearer(OWUI), "X-OpenWebUI-User-Jwt": forward + "x"},
        ]
        for headers in cases:
            r = await me(headers)
            assert r.status_code == 401 and r.json()["error"] == "invalid_token", (headers, r.text)
        # A plain header cannot name anyone once tokens are verified, nor contradict a token.
        r = await me(alice())
        assert r.status_code == 401 and r.json()["error"] == "unsigned_identity"
        r = await me({**bearer(OWUI), "X-OpenWebUI-User-Jwt": forward, "X-OpenWebUI-User-Id": "user-1"})
        assert r.status_code == 401 and r.json()["error"] == "identity_mismatch"
        # The key alone still works (a request on behalf of nobody in particular).
        assert (await me(bearer(OWUI))).json()["end_user"] is None
        # A token does not make a wrong key right.
        r = await me({"Authorization": f"Bearer {session_token}", "X-API-Key": "wrong-key-123"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


async def test_bad_specs_refused_and_readyz_says_little(tmp_path: Path, cache_dir: Path) -> None:
    lol = "a: &a ['lol','lol']\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)}]\n"
                                             for i in range(18))  # fmt: skip
    doubling = {f"s{i}": {"type": "object", "properties": {"l": {"$ref": f"#/components/schemas/s{i - 1}"},
                "r": {"$ref": f"#/components/schemas/s{i - 1}"}}} for i in range(1, 40)}  # fmt: skip
    doubling["s0"] = {"type": "string"}
    refs = {
        "openapi": "3.0.0",
        "info": {"title": "x", "version": "1"},
        "components": {"schemas": doubling},
        "paths": {"/a": {"post": {"operationId": "a", "requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/s39"}}}}}}},
    }  # fmt: skip
    async with service(tmp_path, cache_dir) as client:
        for spec, code in [(lol, "yaml_aliases"), (json.dumps(refs), "spec_too_complex")]:
            r = await client.post(
                "/api/v1/configs/tool_servers/verify",
                json={"url": "http://127.0.0.1:9", "spec_type": "json", "spec": spec},
                headers=bearer(ADMIN),
            )
            assert r.status_code == 400 and r.json()["error"] == code and r.json()["field"] == "spec", r.text
        assert "EXECUTOR_TOOL_SERVER_MAX_SPEC_NODES" in r.json()["detail"]

        stranger = await client.get("/readyz")
        assert stranger.status_code == 200 and stranger.json() == {"status": "ok"}
        assert (await client.get("/readyz", headers=bearer("wrong-key-123"))).json() == {"status": "ok"}
        detail = (await client.get("/readyz", headers=bearer(USER_A))).json()
        assert detail["backend"]["jail"] and detail["database"] == "ok"


async def test_tool_calls_audited_rate_limited_per_end_user_and_strict_bodies(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.audit")
    upstream = tool_server_app()
    async with serve(upstream) as base:
        conns = [conn(base, info={"id": "t"}, config={"access_grants": PUBLIC})]
        async with service(
            tmp_path,
            cache_dir,
            tool_server_connections=conns,
            tool_server_rate_limit_per_principal=2,
            tool_server_rate_limit_per_key=3,
            tool_server_rate_limit_per_connection=100,
        ) as client:
            args = {"item_id": "secret-argument-value", "color": "red"}
            for _ in range(2):
                r = await client.post("/api/v1/tool_servers/t/call/getItem", json={"arguments": args}, headers=alice())
                assert r.status_code == 200, r.text
            r = await client.post("/api/v1/tool_servers/t/call/text", json={}, headers=alice())
            assert r.status_code == 429 and "you" in r.json()["detail"] and int(r.headers["Retry-After"]) >= 1
            assert (await client.post("/api/v1/tool_servers/t/call/text", json={}, headers=bob())).status_code == 200
            r = await client.post("/api/v1/tool_servers/t/call/text", json={}, headers=bob())
            assert r.status_code == 429 and "all its users" in r.json()["detail"], r.text

            # Arguments beside "arguments" are refused, naming them, instead of silently dropped.
            r = await client.post("/api/v1/tool_servers/t/call/text", json={"q": 1}, headers=bearer(USER_A))
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "q"], r.text

            calls = await client.get(
                "/api/v1/audit", params={"kind": "tool_call", "principal": key_id(OWUI)}, headers=bearer(ADMIN)
            )
            entries = calls.json()
            assert len(entries) == 3, entries
            first = entries[-1]
            assert first["principal"] == f"{key_id(OWUI)}/alice" and first["target"] == "t/getItem"
            assert first["status"] == 200 and first["duration_ms"] > 0 and first["detail"]["result"] == "ok"
            only_alice = await client.get(
                "/api/v1/audit", params={"principal": f"{key_id(OWUI)}/alice"}, headers=bearer(ADMIN)
            )
            assert {e["principal"] for e in only_alice.json()} == {f"{key_id(OWUI)}/alice"}
            later = await client.get(
                "/api/v1/audit",
                params={"since": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()},
                headers=bearer(ADMIN),
            )
            assert later.json() == []
            assert "secret-argument-value" not in calls.text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "executor.audit"]
    assert any(line["kind"] == "tool_call" and line["target"] == "t/getItem" for line in lines)
    assert "secret-argument-value" not in caplog.text and OWUI not in caplog.text
