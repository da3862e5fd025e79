"""The tool registry over real HTTP (the service on loopback) with a fake ToolRuntime: no sandbox, no tool code.

The fake stands in for the sandboxes: it "extracts" fixed specs and Valves schemas from marker lines of a file,
validates valves the way a pydantic model would for the few types used here, and records every call, so the
tests can see what the registry asked of the runtime (and that it never asked for anything on a refusal).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response

from executor.access.principal import Principal
from executor.app import create_app
from executor.errors import Unavailable
from executor.openapi.models import MASK
from executor.settings import Settings
from executor.store import Store
from executor.tools.frontmatter import extract_frontmatter, requirements
from executor.tools.records import Extracted, ToolLoadError, ToolRecord, ValvesInvalid, ValvesKind
from executor.tools.registry import ToolRegistry, github_url_to_raw_url, tool_name_from_url
from executor.tools.valves import PYDANTIC_MASK, masked, masked_schema, merged_for_update, secret_fields
from tests.toolserver_helpers import serve

ADMIN = "admin-key-0001"
USER_A = "user-key-aaaa"
OWUI = "owui-key-0001"
GOLDEN = json.loads((Path(__file__).parent / "data" / "owui" / "registry.json").read_text())
SECRET = "sk-very-secret-value-42"
USER_SECRET = "user-token-xyz-77"

VALVES_SCHEMA: dict[str, Any] = {
    "properties": {
        "api_key": {"default": "**********", "format": "password", "title": "Api Key", "type": "string",
                    "writeOnly": True},
        "base_url": {"default": "https://api.example.com", "title": "Base Url", "type": "string"},
        "max_results": {"default": 3, "title": "Max Results", "type": "integer"},
        "signature": {"default": "", "secret": True, "title": "Signature", "type": "string"},
    },
    "title": "Valves",
    "type": "object",
}  # fmt: skip
USER_VALVES_SCHEMA: dict[str, Any] = {
    "properties": {
        "token": {"default": "", "title": "Token", "type": "string"},
        "units": {"default": "metric", "title": "Units", "type": "string",
                  "input": {"type": "select", "options": "unit_options"}},
    },
    "title": "UserValves",
    "type": "object",
}  # fmt: skip

WEATHER = '''"""
title: Weather
author: someone
version: 0.1.0
requirements: requests, pytz>=2024.1
description: Current weather
"""

class Tools:
    class Valves:  # marker: valves
        pass

    class UserValves:  # marker: user_valves
        pass

    def get_weather(self, city: str) -> str:
        """:param city: the city"""
        return city
'''
PLAIN = '''"""
title: Plain
"""

class Tools:
    def echo(self, text: str) -> str:
        return text
'''
BROKEN = "class Tools:\n    def x(self):\n        return (\n"


@dataclass
class FakeRuntime:
    """The ToolRuntime protocol without sandboxes; every call is recorded."""

    extracts: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    specs_asked: list[tuple[str, str, ValvesKind]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    async def extract(
        self, tool_id: str, content: str, *, restricted: bool, requirements: list[str], principal: Any = None
    ) -> Extracted:
        self.extracts.append(
            {"tool_id": tool_id, "content": content, "restricted": restricted, "requirements": requirements}
        )
        if "class Tools" not in content or content.rstrip().endswith("("):
            raise ToolLoadError(
                "SyntaxError: '(' was never closed",
                ["Traceback (most recent call last):", '  File "tool.py", line 3', "SyntaxError: '(' was never closed"],
            )
        names = [line.split("def ")[1].split("(")[0] for line in content.splitlines() if "    def " in line]
        specs = [{"name": n, "description": "", "parameters": {"type": "object", "properties": {}}} for n in names]
        return Extracted(
            specs=specs,
            valves_schema=VALVES_SCHEMA if "marker: valves" in content else None,
            user_valves_schema=USER_VALVES_SCHEMA if "marker: user_valves" in content else None,
        )

    async def validate_valves(
        self, tool: ToolRecord, principal: Principal, kind: ValvesKind, values: dict[str, Any]
    ) -> dict[str, Any]:
        self.validations.append({"tool": tool.id, "principal": principal.id, "kind": kind, "values": dict(values)})
        schema = tool.valves_schema if kind == "valves" else tool.user_valves_schema
        assert schema is not None
        props = schema["properties"]
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name not in props:
                continue  # pydantic ignores unknown fields
            if props[name]["type"] == "integer" and not (isinstance(value, int) or str(value).isdigit()):
                raise ValvesInvalid(kind, [{"loc": [name], "msg": "Input should be a valid integer",
                                            "type": "int_parsing"}])  # fmt: skip
            out[name] = int(value) if props[name]["type"] == "integer" else value
        return out

    async def valves_spec(self, tool: ToolRecord, principal: Principal, kind: ValvesKind) -> dict[str, Any] | None:
        self.specs_asked.append((tool.id, principal.id, kind))
        schema = json.loads(json.dumps(tool.user_valves_schema if kind == "user_valves" else tool.valves_schema))
        schema["properties"]["units"]["input"]["options"] = ["metric", "imperial", f"for-{principal.user_id}"]
        return dict(schema)

    async def forget(self, tool_id: str) -> None:
        self.forgotten.append(tool_id)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def alice() -> dict[str, str]:
    return {"Authorization": f"Bearer {OWUI}", "X-OpenWebUI-User-Id": "alice", "X-OpenWebUI-User-Name": "Alice"}


def bob() -> dict[str, str]:
    return {"Authorization": f"Bearer {OWUI}", "X-OpenWebUI-User-Id": "bob"}


@dataclass
class Running:
    client: httpx.AsyncClient
    app: FastAPI
    runtime: FakeRuntime

    @property
    def registry(self) -> ToolRegistry:
        registry: ToolRegistry = self.app.state.tools
        return registry


@contextlib.asynccontextmanager
async def service(tmp_path: Path, cache_dir: Path, **overrides: Any) -> AsyncIterator[Running]:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "cache_dir": cache_dir,
        "pool_size": 0,
        "api_keys": [USER_A],
        "admin_api_keys": [ADMIN],
        "forward_identity_api_keys": [OWUI],
        "egress_allowlist": ["127.0.0.1"],
        "tool_server_timeout_s": 5,
        "tool_server_retries": 0,
    }
    settings = Settings(_env_file=None, **{**base, **overrides})  # type: ignore[call-arg]
    app = create_app(settings)
    runtime = FakeRuntime()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        app.state.tools.runtime = runtime
        yield Running(client, app, runtime)


def form(tool_id: str, content: str = PLAIN, **extra: Any) -> dict[str, Any]:
    return {"id": tool_id, "name": extra.pop("name", tool_id.title()), "content": content,
            "meta": {"description": "a tool"}, **extra}  # fmt: skip


async def creator_key(client: httpx.AsyncClient, name: str = "tool-author") -> str:
    r = await client.post("/api/v1/keys", json={"name": name, "may_create_tools": True}, headers=bearer(ADMIN))
    assert r.status_code == 201 and r.json()["may_create_tools"] is True, r.text
    key: str = r.json()["key"]
    return key


# -- text-only parts, against Open WebUI's own answers ----------------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN["frontmatter"], ids=lambda c: repr(c["content"][:24]))
def test_frontmatter_matches_open_webui(case: dict[str, Any]) -> None:
    assert extract_frontmatter(case["content"]) == case["expected"]


@pytest.mark.parametrize("case", GOLDEN["load_url"], ids=lambda c: c["url"])
def test_load_url_names_match_open_webui(case: dict[str, Any]) -> None:
    assert github_url_to_raw_url(case["url"]) == case["raw_url"]
    assert tool_name_from_url(case["raw_url"]) == case["name"]


def test_requirements_are_a_comma_list() -> None:
    assert requirements({"requirements": " requests, pytz>=2024.1 ,, lxml "}) == ["requests", "pytz>=2024.1", "lxml"]
    assert requirements({}) == [] and requirements({"requirements": ""}) == []


def test_secret_fields_and_masks() -> None:
    schema = {
        "properties": {
            "api_key": {"type": "string"},  # by name
            "Password2": {"type": "string"},
            "plain": {"type": "string"},
            "hidden": {"type": "string", "secret": True},
            "opt": {"anyOf": [{"format": "password", "type": "string", "writeOnly": True}, {"type": "null"}]},
            "count": {"type": "integer", "default": 3},
        }
    }
    assert secret_fields(schema) == {"api_key", "Password2", "hidden", "opt"}
    shown = masked({"api_key": "a", "plain": "p", "hidden": "", "opt": None, "old_token": "t", "count": 1}, schema)
    assert shown == {"api_key": MASK, "plain": "p", "hidden": "", "opt": None, "old_token": MASK, "count": 1}
    spec = masked_schema({"properties": {"api_key": {"default": "in-code"}, "plain": {"default": "d"}}})
    assert spec == {"properties": {"api_key": {"default": MASK}, "plain": {"default": "d"}}}
    values, kept = merged_for_update(
        {"api_key": MASK, "hidden": PYDANTIC_MASK, "plain": MASK, "count": None, "opt": "new"},
        {"api_key": "stored"},
        schema,
    )
    # A mask keeps a stored secret; with none stored the field stays unset; a non-secret mask is a value.
    assert values == {"api_key": "stored", "plain": MASK, "opt": "new"} and kept == ["api_key"]


# -- over HTTP ---------------------------------------------------------------------------------------------


async def test_create_list_get_update_delete(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        r = await c.post("/api/v1/tools/create", json=form("Weather", WEATHER), headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["id"] == "weather" and made["name"] == "Weather"  # lowercased, as Open WebUI does
        assert "content" not in made and "specs" not in made  # ToolResponse
        assert made["meta"]["manifest"]["title"] == "Weather" and made["meta"]["has_user_valves"] is True
        assert made["meta"]["description"] == "a tool" and made["restricted"] is False
        assert made["status"] == "ready" and made["access_grants"] == []
        assert isinstance(made["created_at"], int) and made["updated_at"] == made["created_at"]
        assert s.runtime.extracts[-1]["requirements"] == ["pytz>=2024.1", "requests"]  # validated, canonical order

        # Both list paths answer directly (no redirect), without source.
        for path in ("/api/v1/tools/", "/api/v1/tools"):
            r = await c.get(path, headers=bearer(ADMIN))
            assert r.status_code == 200 and not r.history, (path, r.status_code)
            (item,) = r.json()
            assert item["id"] == "weather" and item["content"] is None and item["has_user_valves"] is True
            assert [f["name"] for f in item["specs"]] == ["get_weather"]
        listed = (await c.get("/api/v1/tools/list", headers=bearer(ADMIN))).json()
        assert [(t["id"], t["write_access"]) for t in listed] == [("weather", True)]

        got = (await c.get("/api/v1/tools/id/weather", headers=bearer(ADMIN))).json()
        assert got["content"] == WEATHER and got["write_access"] is True and got["specs"][0]["name"] == "get_weather"

        # Same content: no sandbox; new content: extracted again and the tool's sandboxes dropped.
        n = len(s.runtime.extracts)
        r = await c.post("/api/v1/tools/id/weather/update", json=form("weather", WEATHER, name="Wetter"),
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 200 and r.json()["name"] == "Wetter" and len(s.runtime.extracts) == n, r.text
        assert s.runtime.forgotten == []
        new = WEATHER + "\n    def forecast(self, city: str) -> str:\n        return city\n"
        r = await c.post("/api/v1/tools/id/weather/update", json=form("weather", new), headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        assert r.json()["content"] == new and [f["name"] for f in r.json()["specs"]] == ["get_weather", "forecast"]
        assert s.runtime.forgotten == ["weather"] and len(s.runtime.extracts) == n + 1

        r = await c.delete("/api/v1/tools/id/weather/delete", headers=bearer(ADMIN))
        assert r.status_code == 200 and r.json() is True
        assert s.runtime.forgotten == ["weather", "weather"]
        assert (await c.get("/api/v1/tools/id/weather", headers=bearer(ADMIN))).status_code == 404
        assert (await c.get("/api/v1/tools/", headers=bearer(ADMIN))).json() == []
        # The unified list still answers.
        assert (await c.get("/api/v1/tools/specs", headers=bearer(ADMIN))).status_code == 200

        audit = (await c.get("/api/v1/audit", params={"kind": "admin"}, headers=bearer(ADMIN))).json()
        actions = [e["action"] for e in audit if e["target"] == "weather"]
        assert actions == ["tool.delete", "tool.update", "tool.update", "tool.create"]


async def test_who_may_create_tools(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        for headers in (bearer(USER_A), alice()):
            r = await c.post("/api/v1/tools/create", json=form("nope"), headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "tool_create_forbidden", r.text
        assert s.runtime.extracts == []  # refused before any sandbox
        author = await creator_key(c)
        assert (await c.get("/api/v1/me", headers=bearer(author))).json()["may_create_tools"] is True
        r = await c.post("/api/v1/tools/create", json=form("mine"), headers=bearer(author))
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == (await c.get("/api/v1/me", headers=bearer(author))).json()["id"]
        # The owner reads and changes it; another user key does not even see it.
        assert (await c.get("/api/v1/tools/id/mine", headers=bearer(author))).json()["write_access"] is True
        assert (await c.get("/api/v1/tools/id/mine", headers=bearer(USER_A))).status_code == 404
        keys = (await c.get("/api/v1/keys", headers=bearer(ADMIN))).json()
        assert [k["may_create_tools"] for k in keys if k["name"] == "tool-author"] == [True]


async def test_bad_and_taken_ids(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        for bad in ("my-tool", "1tool", "", "has space", "tool.py", "ünï"):
            r = await c.post("/api/v1/tools/create", json=form(bad), headers=bearer(ADMIN))
            assert r.status_code == 400 and r.json()["field"] == "id", (bad, r.text)
        assert (await c.post("/api/v1/tools/create", json=form("My_Tool"), headers=bearer(ADMIN))).status_code == 200
        r = await c.post("/api/v1/tools/create", json=form("MY_TOOL"), headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["error"] == "id_taken" and r.json()["field"] == "id", r.text
        assert "already registered" in r.json()["detail"]
        assert len(s.runtime.extracts) == 1


async def test_nothing_is_stored_when_the_file_does_not_load(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        r = await c.post("/api/v1/tools/create", json=form("broken", BROKEN), headers=bearer(ADMIN))
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "tool_load_failed" and body["field"] == "content"
        assert body["traceback"][-1] == "SyntaxError: '(' was never closed"
        assert (await c.get("/api/v1/tools/id/broken", headers=bearer(ADMIN))).status_code == 404
        assert (await c.get("/api/v1/tools/", headers=bearer(ADMIN))).json() == []
        # An update to code that does not load keeps the stored version whole.
        assert (await c.post("/api/v1/tools/create", json=form("good"), headers=bearer(ADMIN))).status_code == 200
        r = await c.post("/api/v1/tools/id/good/update", json=form("good", BROKEN, name="Changed"),
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 400 and r.json()["traceback"], r.text
        got = (await c.get("/api/v1/tools/id/good", headers=bearer(ADMIN))).json()
        assert got["content"] == PLAIN and got["name"] == "Good"
        assert s.runtime.forgotten == []


class _DownRuntime(FakeRuntime):
    async def extract(self, *args: Any, **kwargs: Any) -> Any:
        raise Unavailable("tool_runtime_unavailable", "no sandbox can start")


async def test_a_runtime_that_is_down_is_503_and_stores_nothing(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        s.registry.runtime = _DownRuntime()
        r = await s.client.post("/api/v1/tools/create", json=form("x"), headers=bearer(ADMIN))
        assert r.status_code == 503 and r.json()["detail"] == "no sandbox can start", r.text
        assert (await s.client.get("/api/v1/tools/", headers=bearer(ADMIN))).json() == []


async def test_grants_and_write_access(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        author = await creator_key(c)
        grants = [{"principal_type": "user", "principal_id": "alice", "permission": "read"}]
        r = await c.post("/api/v1/tools/create", json=form("shared", WEATHER, access_grants=grants),
                         headers=bearer(author))  # fmt: skip
        assert r.status_code == 200 and r.json()["access_grants"] == grants, r.text

        # alice reads it (no source), bob does not see it at all.
        got = await c.get("/api/v1/tools/id/shared", headers=alice())
        assert got.status_code == 200 and got.json()["write_access"] is False and "content" not in got.json()
        assert [t["id"] for t in (await c.get("/api/v1/tools/", headers=alice())).json()] == ["shared"]
        assert (await c.get("/api/v1/tools/id/shared", headers=bob())).status_code == 404
        assert (await c.get("/api/v1/tools/", headers=bob())).json() == []

        # Read access is not write access: the check Open WebUI once skipped on update.
        n = len(s.runtime.extracts)
        evil = WEATHER.replace("return city", "return open('/etc/passwd').read()")
        for method, path, body in [
            ("POST", "/api/v1/tools/id/shared/update", form("shared", evil)),
            ("POST", "/api/v1/tools/id/shared/update", form("shared", WEATHER, name="renamed")),
            ("POST", "/api/v1/tools/id/shared/access/update", {"access_grants": []}),
            ("DELETE", "/api/v1/tools/id/shared/delete", None),
            ("GET", "/api/v1/tools/id/shared/valves", None),
            ("GET", "/api/v1/tools/id/shared/valves/spec", None),
            ("POST", "/api/v1/tools/id/shared/valves/update", {"base_url": "https://evil.example"}),
        ]:
            r = await c.request(method, path, json=body, headers=alice())
            assert r.status_code == 403 and r.json()["error"] == "tool_write_forbidden", (path, r.text)
            r = await c.request(method, path, json=body, headers=bob())
            assert r.status_code == 404, (path, r.text)
        assert len(s.runtime.extracts) == n and s.runtime.validations == [] and s.runtime.forgotten == []
        got = (await c.get("/api/v1/tools/id/shared", headers=bearer(author))).json()
        assert got["content"] == WEATHER and got["name"] == "Shared"

        # A write grant lets alice change name and valves, but not the code (she may not create tools).
        write = [*grants, {"principal_type": "user", "principal_id": "alice", "permission": "write"}]
        r = await c.post("/api/v1/tools/id/shared/access/update", json={"access_grants": write},
                         headers=bearer(author))  # fmt: skip
        assert r.status_code == 200 and r.json()["access_grants"] == write, r.text
        r = await c.post("/api/v1/tools/id/shared/update", json=form("shared", WEATHER, name="By Alice"),
                         headers=alice())  # fmt: skip
        assert r.status_code == 200 and r.json()["name"] == "By Alice", r.text
        r = await c.post("/api/v1/tools/id/shared/update", json=form("shared", evil), headers=alice())
        assert r.status_code == 403 and r.json()["error"] == "tool_code_forbidden", r.text
        assert (await c.get("/api/v1/tools/id/shared", headers=alice())).json()["write_access"] is True

        # Update ignores access_grants, as Open WebUI does: grants change only through /access/update.
        r = await c.post("/api/v1/tools/id/shared/update", json=form("shared", WEATHER, access_grants=[]),
                         headers=bearer(author))  # fmt: skip
        assert r.json()["access_grants"] == write

        # The older access_control dict is converted on create.
        legacy = form("legacy", access_control={"read": {"user_ids": ["bob"]}})
        r = await c.post("/api/v1/tools/create", json=legacy, headers=bearer(ADMIN))
        assert r.status_code == 200, r.text
        assert r.json()["access_grants"] == [{"principal_type": "user", "principal_id": "bob", "permission": "read"}]
        assert [t["id"] for t in (await c.get("/api/v1/tools/", headers=bob())).json()] == ["legacy"]
        public = form("public", access_control=None)
        r = await c.post("/api/v1/tools/create", json=public, headers=bearer(ADMIN))
        assert r.json()["access_grants"] == [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
        assert (await c.get("/api/v1/tools/id/public", headers=bearer(USER_A))).status_code == 200


async def test_restricted_is_for_admins_to_lift(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir, tool_restrict_non_admin=True) as s:
        c = s.client
        author = await creator_key(c)
        r = await c.post("/api/v1/tools/create", json=form("theirs"), headers=bearer(author))
        assert r.status_code == 200 and r.json()["restricted"] is True, r.text
        assert s.runtime.extracts[-1]["restricted"] is True
        r = await c.post("/api/v1/tools/create", json=form("lifted", restricted=False), headers=bearer(author))
        assert r.status_code == 403 and r.json()["field"] == "restricted", r.text
        r = await c.post("/api/v1/tools/create", json=form("admins"), headers=bearer(ADMIN))
        assert r.json()["restricted"] is False
        # An admin lifts it: extracted again without the policy, sandboxes dropped.
        r = await c.post("/api/v1/tools/id/theirs/update", json=form("theirs", restricted=False),
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 200 and r.json()["restricted"] is False, r.text
        assert s.runtime.extracts[-1]["restricted"] is False and s.runtime.forgotten == ["theirs"]


async def test_valves_are_masked_and_write_only(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        assert (await c.post("/api/v1/tools/create", json=form("weather", WEATHER), headers=bearer(ADMIN))).is_success
        assert (await c.post("/api/v1/tools/create", json=form("plain"), headers=bearer(ADMIN))).is_success
        assert (await c.get("/api/v1/tools/id/weather/valves", headers=bearer(ADMIN))).json() == {}

        spec = (await c.get("/api/v1/tools/id/weather/valves/spec", headers=bearer(ADMIN))).json()
        assert spec["properties"]["api_key"]["default"] == MASK and spec["properties"]["max_results"]["default"] == 3
        assert s.runtime.specs_asked == []  # no dynamic options: the stored schema, no sandbox
        assert (await c.get("/api/v1/tools/id/plain/valves/spec", headers=bearer(ADMIN))).json() is None

        r = await c.post(
            "/api/v1/tools/id/weather/valves/update",
            json={"api_key": SECRET, "base_url": "https://api.example.org", "max_results": "5", "signature": None},
            headers=bearer(ADMIN),
        )
        assert r.status_code == 200, r.text
        # None dropped; only set fields stored; the secret comes back masked.
        assert r.json() == {"api_key": MASK, "base_url": "https://api.example.org", "max_results": 5}
        assert s.runtime.validations[-1]["values"] == {
            "api_key": SECRET, "base_url": "https://api.example.org", "max_results": "5"
        }  # fmt: skip
        assert (await c.get("/api/v1/tools/id/weather/valves", headers=bearer(ADMIN))).json() == r.json()

        # What Open WebUI's valves form does on save: post back what it was shown. The secret is kept.
        shown = (await c.get("/api/v1/tools/id/weather/valves", headers=bearer(ADMIN))).json()
        r = await c.post("/api/v1/tools/id/weather/valves/update", json={**shown, "max_results": 7,
                         "signature": MASK}, headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 200 and r.json()["max_results"] == 7 and r.json()["api_key"] == MASK, r.text
        record = await s.registry.record(s.app.state.access.principal(None, {}, None), "weather")
        assert record.valves == {"api_key": SECRET, "base_url": "https://api.example.org", "max_results": 7}

        # 400 names the field; nothing changes.
        r = await c.post("/api/v1/tools/id/weather/valves/update", json={"max_results": "many"},
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 400 and r.json()["field"] == "valves.max_results", r.text
        r = await c.post("/api/v1/tools/id/plain/valves/update", json={"x": 1}, headers=bearer(ADMIN))
        assert r.status_code == 404 and r.json()["error"] == "no_valves"

        # The secret is in no response, no audit entry and no log line.
        listing = await c.get("/api/v1/tools/", headers=bearer(ADMIN))
        got = await c.get("/api/v1/tools/id/weather", headers=bearer(ADMIN))
        audit = await c.get("/api/v1/audit", headers=bearer(ADMIN))
        assert any(e["action"] == "tool.valves.update" for e in audit.json())
        for text in (listing.text, got.text, audit.text, caplog.text):
            assert SECRET not in text

        # An update with new code the stored valves no longer fit is refused, as in Open WebUI 0.12.4.
        s.runtime.validations.clear()
        real = s.runtime.validate_valves

        async def strict(tool: ToolRecord, principal: Principal, kind: ValvesKind, values: dict[str, Any]) -> Any:
            if tool.content != WEATHER:
                raise ValvesInvalid(kind, [{"loc": ["max_results"], "msg": "too big", "type": "less_than"}])
            return await real(tool, principal, kind, values)

        s.runtime.validate_valves = strict  # type: ignore[method-assign]
        r = await c.post("/api/v1/tools/id/weather/update", json=form("weather", WEATHER + "\n# v2\n"),
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 400 and r.json()["error"] == "valves_incompatible", r.text
        assert r.json()["field"] == "valves.max_results" and SECRET not in r.text
        assert (await c.get("/api/v1/tools/id/weather", headers=bearer(ADMIN))).json()["content"] == WEATHER


async def test_user_valves_are_per_end_user(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        public = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
        r = await c.post("/api/v1/tools/create", json=form("weather", WEATHER, access_grants=public),
                         headers=bearer(ADMIN))  # fmt: skip
        assert r.status_code == 200, r.text
        mine = {"token": USER_SECRET, "units": "imperial"}
        r = await c.post("/api/v1/tools/id/weather/valves/user/update", json=mine, headers=alice())
        assert r.status_code == 200 and r.json() == {"token": MASK, "units": "imperial"}, r.text
        assert s.runtime.validations[-1]["principal"].endswith("/alice")

        assert (await c.get("/api/v1/tools/id/weather/valves/user", headers=alice())).json() == r.json()
        assert (await c.get("/api/v1/tools/id/weather/valves/user", headers=bob())).json() == {}
        assert (await c.get("/api/v1/tools/id/weather/valves/user", headers=bearer(USER_A))).json() == {}
        r = await c.post("/api/v1/tools/id/weather/valves/user/update", json={"units": "metric"}, headers=bob())
        assert r.json() == {"units": "metric"}
        # Alice posts back what she was shown: her token stays.
        shown = (await c.get("/api/v1/tools/id/weather/valves/user", headers=alice())).json()
        await c.post("/api/v1/tools/id/weather/valves/user/update", json=shown, headers=alice())

        principal = s.app.state.access.principal
        access = s.app.state.access
        key = await access.key(OWUI)
        as_alice = principal(key, {"x-openwebui-user-id": "alice"}, None)
        as_bob = principal(key, {"x-openwebui-user-id": "bob"}, None)
        assert await s.registry.user_valves_of("weather", as_alice) == {"token": USER_SECRET, "units": "imperial"}
        assert await s.registry.user_valves_of("weather", as_bob) == {"units": "metric"}

        # The user valves spec resolves select options per user, in the sandbox (the fake marks whose).
        spec = (await c.get("/api/v1/tools/id/weather/valves/user/spec", headers=alice())).json()
        assert spec["properties"]["units"]["input"]["options"][-1] == "for-alice"
        assert s.runtime.specs_asked[-1] == ("weather", as_alice.id, "user_valves")
        # The admin valves stay the admin's: a reader cannot see them.
        assert (await c.get("/api/v1/tools/id/weather/valves", headers=alice())).status_code == 403


async def test_valves_survive_a_restart(tmp_path: Path, cache_dir: Path) -> None:
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        public = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
        made = await c.post("/api/v1/tools/create", json=form("weather", WEATHER, access_grants=public),
                            headers=bearer(ADMIN))  # fmt: skip
        assert made.is_success, made.text
        await c.post("/api/v1/tools/id/weather/valves/update", json={"api_key": SECRET}, headers=bearer(ADMIN))
        await c.post("/api/v1/tools/id/weather/valves/user/update", json={"token": USER_SECRET}, headers=alice())
    async with service(tmp_path, cache_dir) as s:
        c = s.client
        assert (await c.get("/api/v1/tools/id/weather/valves", headers=bearer(ADMIN))).json() == {"api_key": MASK}
        assert (await c.get("/api/v1/tools/id/weather/valves/user", headers=alice())).json() == {"token": MASK}
        record = await s.registry.record(s.app.state.access.principal(None, {}, None), "weather")
        assert record.valves == {"api_key": SECRET} and record.content == WEATHER
        assert s.runtime.extracts == []  # nothing re-extracted at start


async def test_load_url_through_the_outbound_policy(tmp_path: Path, cache_dir: Path) -> None:
    files = FastAPI(openapi_url=None)

    @files.get("/tools/weather.py")
    async def weather() -> Response:
        return PlainTextResponse(WEATHER)

    @files.get("/big/main.py")
    async def big() -> Response:
        return PlainTextResponse("#" * 5000)

    @files.get("/empty.py")
    async def empty() -> Response:
        return PlainTextResponse("")

    async with serve(files) as base:
        async with service(tmp_path, cache_dir, tool_max_bytes=4096) as s:
            c = s.client
            r = await c.post("/api/v1/tools/load/url", json={"url": f"{base}/tools/weather.py"}, headers=bearer(ADMIN))
            assert r.status_code == 200 and r.json() == {"name": "weather", "content": WEATHER}, r.text
            r = await c.post("/api/v1/tools/load/url", json={"url": f"{base}/big/main.py"}, headers=bearer(ADMIN))
            assert r.status_code == 413, r.text
            r = await c.post("/api/v1/tools/load/url", json={"url": f"{base}/empty.py"}, headers=bearer(ADMIN))
            assert r.status_code == 400 and r.json()["error"] == "no_data", r.text
            r = await c.post("/api/v1/tools/load/url", json={"url": f"{base}/missing.py"}, headers=bearer(ADMIN))
            assert r.status_code == 502 and "404" in r.json()["detail"], r.text
            r = await c.post("/api/v1/tools/load/url", json={"url": "not a url"}, headers=bearer(ADMIN))
            assert r.status_code == 422
            author = await creator_key(c)
            for headers in (bearer(USER_A), bearer(author), alice()):
                r = await c.post("/api/v1/tools/load/url", json={"url": f"{base}/tools/weather.py"}, headers=headers)
                assert r.status_code == 403, r.text
        # Without the allow-list entry, loopback is refused.
        async with service(tmp_path / "other", cache_dir, egress_allowlist=[]) as s:
            r = await s.client.post("/api/v1/tools/load/url", json={"url": f"{base}/tools/weather.py"},
                                    headers=bearer(ADMIN))  # fmt: skip
            assert r.status_code == 400 and r.json()["error"] == "egress_denied", r.text


async def test_older_key_tables_get_the_new_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE api_keys (id VARCHAR(64) PRIMARY KEY, name VARCHAR(64), role VARCHAR(16), "
        "forward_identity BOOLEAN, hash VARCHAR(64) UNIQUE, created_at DATETIME, revoked_at DATETIME)"
    )
    con.execute("INSERT INTO api_keys VALUES ('key-1', 'old', 'user', 0, 'h', '2024-01-01 00:00:00', NULL)")
    con.commit()
    con.close()
    store = Store(f"sqlite+aiosqlite:///{db}")
    try:
        await store.create_all()
        from executor.access.keys import KeyStore

        settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
        live, _ = await KeyStore(settings, store).active()
        assert [k.may_create_tools for k in live.values()] == [False]
    finally:
        await store.close()
