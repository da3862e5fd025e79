"""Tool modules end to end: registered through the Open WebUI-shaped routes, run in real sandboxes (jailed local
kernels; the Docker backend where marked), called by end users behind a chat backend's key.

Keys: one admin, one Open WebUI key that forwards identity (alice and bob behind it). The tool files are in
tests/data/tool_modules/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from executor.settings import Settings
from tests.conftest import BACKENDS, Service, sandbox_processes

ADMIN = "admin-key-0001"
OWUI = "owui-key-0001"
TOOLS = Path(__file__).parent / "data" / "tool_modules"
PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]


def source(name: str) -> str:
    return (TOOLS / f"{name}.py").read_text()


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def user(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OWUI}", "X-OpenWebUI-User-Id": name, "X-OpenWebUI-User-Name": name.title()}


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheelhouse for requirements (pip is pointed at it alone: the tests need no network)."""
    from tests.test_tool_requirements import make_wheel

    where = tmp_path_factory.mktemp("wheels")
    make_wheel(where, "exectool-dep", "1.0", {"exectool_dep/__init__.py": "VALUE = 'from the layer'\n"})
    return where


@pytest.fixture
def settings(settings: Settings, wheels: Path) -> Settings:
    settings.tool_pip_find_links = [str(wheels)]
    settings.tool_pip_no_index = True
    settings.admin_api_keys = [ADMIN]
    settings.forward_identity_api_keys = [OWUI]
    settings.tool_import_timeout_s = 15
    settings.tool_call_timeout_s = 20
    return settings


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with service.client(None) as c:
        yield c


async def register(c: httpx.AsyncClient, tool_id: str, name: str | None = None, **extra: Any) -> httpx.Response:
    form = {"id": tool_id, "name": tool_id.title(), "content": source(name or tool_id),
            "meta": {"description": tool_id}, "access_grants": PUBLIC, **extra}  # fmt: skip
    return await c.post("/api/v1/tools/create", json=form, headers=admin())


async def call(c: httpx.AsyncClient, who: str, fn: str, **arguments: Any) -> dict[str, Any]:
    r = await c.post(f"/api/v1/tools/id/keeper/call/{fn}", json={"arguments": arguments}, headers=user(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def test_valves_user_valves_and_per_user_sandboxes(client: httpx.AsyncClient, service: Service) -> None:
    c = client
    assert (await register(c, "keeper")).status_code == 200
    valves = {"api_key": "sk-admin-secret", "password": "pw-1", "retries": 3}
    r = await c.post("/api/v1/tools/id/keeper/valves/update", json=valves, headers=admin())
    assert r.status_code == 200, r.text
    assert "sk-admin-secret" not in r.text and "pw-1" not in r.text
    shown = (await c.get("/api/v1/tools/id/keeper/valves", headers=admin())).json()
    assert shown["retries"] == 3 and shown["api_key"] != "sk-admin-secret" and shown["password"] != "pw-1"
    bad = await c.post("/api/v1/tools/id/keeper/valves/update", json={"retries": 9}, headers=admin())
    assert bad.status_code == 400 and bad.json()["field"] == "valves.retries", bad.text
    r = await c.post("/api/v1/tools/id/keeper/valves/user/update",
                     json={"units": "imperial", "token": "alice-token"}, headers=user("alice"))  # fmt: skip
    assert r.status_code == 200 and "alice-token" not in r.text, r.text

    a1 = json.loads((await call(c, "alice", "whoami"))["result"])
    b1 = json.loads((await call(c, "bob", "whoami"))["result"])
    a2 = json.loads((await call(c, "alice", "whoami"))["result"])
    assert a1["user"] == {"id": "alice", "name": "Alice", "role": "user"} and a1["tool_id"] == "keeper"
    assert (a1["api_key"], a1["password"], a1["retries"]) == ("sk-admin-secret", "pw-1", 3)
    assert (a1["units"], a1["token"]) == ("imperial", "alice-token")
    assert (b1["units"], b1["token"], b1["user"]["id"]) == ("metric", "", "bob")
    # Warm: alice's second call ran in her same sandbox (the instance counted both calls); bob's never did.
    assert a2["calls"] == 2 and b1["calls"] == 1
    hosts = service.app.state.tool_hosts  # type: ignore[attr-defined]
    # One sandbox per principal (the admin's valves were validated in the admin's own).
    owners = sorted(key[2].rpartition("/")[2] for key in hosts.hosts_of("keeper") if "/" in key[2])
    assert owners == ["alice", "bob"] and len(hosts.hosts_of("keeper")) == 3
    # The caller cannot forge what the host injects.
    r = await c.post("/api/v1/tools/id/keeper/call/whoami", json={"arguments": {"__user__": {"id": "admin"}}},
                     headers=user("bob"))  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "arguments.__user__", r.text


async def test_sync_async_events_results_and_errors(client: httpx.AsyncClient) -> None:
    c = client
    assert (await register(c, "keeper")).status_code == 200
    added = await call(c, "alice", "add", a=2, b="40")  # Open WebUI's coercion: "40" -> 40 for an int
    assert added["status"] == "ok" and added["result"] == "42" and added["stdout"] == "adding 2 40\n", added
    counted = await call(c, "alice", "countdown", n=3)
    descriptions = [e["data"]["description"] for e in counted["events"]]
    assert counted["result"] == "counted down from 3" and descriptions == ["3", "2", "1", "liftoff"]
    embed = await call(c, "alice", "embed")
    assert embed["outputs"] == [{"type": "html", "mime_type": "text/html", "data": "<b>hello</b>",
                                 "name": None, "url": None}]  # fmt: skip
    assert json.loads(embed["result"])["code"] == "ui_component"
    picture = await call(c, "alice", "picture")
    assert picture["outputs"][0]["type"] == "image" and picture["outputs"][0]["mime_type"] == "image/png"
    assert picture["result"] == "picture: Image file read successfully."
    failed = await call(c, "alice", "fail", why="boom")
    assert failed["status"] == "error" and failed["error"] == {"name": "ValueError", "value": "boom"}
    # Bad calls are refused before any sandbox is asked.
    r = await c.post("/api/v1/tools/id/keeper/call/nope", json={"arguments": {}}, headers=user("alice"))
    assert r.status_code == 404 and r.json()["error"] == "function_not_found"
    r = await c.post("/api/v1/tools/id/keeper/call/add", json={"arguments": {"a": 1}}, headers=user("alice"))
    assert r.status_code == 422 and r.json()["field"] == "arguments.b"
    r = await c.post("/api/v1/tools/id/keeper/call/add", json={"arguments": {"a": 1, "b": 2, "c": 3}},
                     headers=user("alice"))  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "arguments.c"


async def test_events_stream_in_order_and_event_calls(client: httpx.AsyncClient) -> None:
    c = client
    assert (await register(c, "keeper")).status_code == 200
    names: list[str] = []
    async with c.stream("POST", "/api/v1/tools/id/keeper/call/countdown/stream", json={"arguments": {"n": 2}},
                        headers=user("alice")) as r:  # fmt: skip
        assert r.status_code == 200
        async for name, data in sse(r):
            names.append(name if name != "event" else data["data"]["description"])
            if name == "done":
                assert data["status"] == "ok" and data["result"] == "counted down from 2"
    assert names == ["2", "1", "liftoff", "done"]

    unanswered = await call(c, "alice", "confirm", what="delete")
    assert unanswered["status"] == "error" and "no client is listening" in unanswered["error"]["value"]

    async def answer(value: Any, who: str = "alice") -> dict[str, Any]:
        async with c.stream("POST", "/api/v1/tools/id/keeper/call/confirm/stream",
                            json={"arguments": {"what": "delete"}}, headers=user("alice")) as r:  # fmt: skip
            async for name, data in sse(r):
                if name == "event_call":
                    assert data["event"]["type"] == "confirmation"
                    url = f"/api/v1/tools/id/keeper/calls/{data['call_id']}/reply"
                    if who != "alice":  # someone else cannot answer alice's question
                        other = await c.post(url, json={"value": True}, headers=user(who))
                        assert other.status_code == 404, other.text
                    assert (await c.post(url, json=value, headers=user("alice"))).status_code == 204
                if name == "done":
                    result: dict[str, Any] = data
                    return result
        raise AssertionError("no done event")

    yes = await answer({"value": True}, who="bob")
    assert yes["status"] == "ok" and yes["result"] == "delete: yes", yes
    refused = await answer({"error": "the user closed the dialog"})
    assert refused["status"] == "error" and "the user closed the dialog" in refused["error"]["value"]


async def test_a_tool_sees_nothing_of_other_tools_users_or_the_service(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client
    monkeypatch.setenv("EXECUTOR_SERVICE_SECRET", "service-secret")  # the service's own environment
    assert (await register(c, "keeper")).status_code == 200
    assert (await register(c, "other")).status_code == 200
    r = await c.post("/api/v1/tools/id/other/valves/update", json={"other_secret": "s3"}, headers=admin())
    assert r.status_code == 200
    await c.post("/api/v1/tools/id/keeper/valves/user/update", json={"token": "bob-token"}, headers=user("bob"))
    assert (await c.post("/api/v1/tools/id/other/call/ping", json={}, headers=user("alice"))).json()["result"] == "pong"
    seen = json.loads((await call(c, "alice", "snoop"))["result"])
    markers = {
        "EXECUTOR_SANDBOX",
        "EXECUTOR_FONT_CACHE",
        "EXECUTOR_BASE_PYTHON",
        "EXECUTOR_EGRESS_PORT",
        "EXECUTOR_EGRESS_SOCKET",
    }  # the sandbox's own
    assert not [k for k in seen["env"] if "KEY" in k or (k.startswith("EXECUTOR_") and k not in markers)], seen["env"]
    assert seen["tool_modules"] == []
    assert "Valves" not in " ".join(m for m in seen["models"] if not m.startswith("Tools.")), seen["models"]
    assert json.loads((await call(c, "alice", "whoami"))["result"])["token"] == ""


async def test_bad_files_are_refused_and_leave_nothing(client: httpx.AsyncClient, service: Service) -> None:
    c = client
    broken = await register(c, "broken")
    assert broken.status_code == 400, broken.text
    body = broken.json()
    assert body["error"] == "tool_load_failed" and "ModuleNotFoundError" in body["traceback"][-1], body
    hangs = await c.post("/api/v1/tools/create", json={"id": "hangs", "name": "H", "content": source("hangs"),
                         "meta": {"description": ""}}, headers=admin())  # fmt: skip
    assert hangs.status_code == 400 and hangs.json()["error"] == "tool_import_timeout", hangs.text
    assert (await c.get("/api/v1/tools/", headers=admin())).json() == []
    for _ in range(100):
        if not sandbox_processes(service.instance):
            break
        await asyncio.sleep(0.1)
    assert sandbox_processes(service.instance) == []
    pip = await c.post("/api/v1/tools/create", json={"id": "pip", "name": "P", "meta": {"description": ""},
                       "content": '"""\nrequirements: requests, --index-url https://evil.example/simple\n"""\n'
                                  "class Tools:\n    pass\n"}, headers=admin())  # fmt: skip
    assert pip.status_code == 400 and pip.json()["field"] == "content" and "--index-url" in pip.text, pip.text


async def test_a_timeout_stops_the_sandbox_and_the_next_call_gets_a_fresh_one(
    client: httpx.AsyncClient, service: Service
) -> None:
    c = client
    service.settings.tool_call_timeout_s = 2
    assert (await register(c, "keeper")).status_code == 200
    first = await call(c, "alice", "whoami")
    slow = await call(c, "alice", "sleepy", seconds=60)
    assert slow["status"] == "error" and slow["error"]["name"] == "Timeout", slow
    hosts = service.app.state.tool_hosts  # type: ignore[attr-defined]
    assert hosts.hosts_of("keeper") == []
    assert sandbox_processes(service.instance) == []
    again = json.loads((await call(c, "alice", "whoami"))["result"])
    assert again["calls"] == 1 and json.loads(first["result"])["calls"] == 1


async def test_update_and_delete_drop_the_tools_sandboxes(client: httpx.AsyncClient, service: Service) -> None:
    c = client
    assert (await register(c, "keeper")).status_code == 200
    await call(c, "alice", "add", a=1, b=1)
    hosts = service.app.state.tool_hosts  # type: ignore[attr-defined]
    assert len(hosts.hosts_of("keeper")) == 1
    changed = source("keeper").replace("return a + b", "return a * b")
    form = {"id": "keeper", "name": "Keeper", "content": changed, "meta": {"description": "k"}}
    r = await c.post("/api/v1/tools/id/keeper/update", json=form, headers=admin())
    assert r.status_code == 200, r.text
    assert hosts.hosts_of("keeper") == []
    assert (await call(c, "alice", "add", a=3, b=4))["result"] == "12"
    assert (await c.delete("/api/v1/tools/id/keeper/delete", headers=admin())).json() is True
    assert hosts.hosts_of("keeper") == []
    r = await c.post("/api/v1/tools/id/keeper/call/add", json={"arguments": {"a": 1, "b": 1}}, headers=user("alice"))
    assert r.status_code == 404


async def test_the_unified_list_and_the_tool_server_face(client: httpx.AsyncClient) -> None:
    c = client
    assert (await register(c, "keeper")).status_code == 200
    assert (await register(c, "other")).status_code == 200
    specs = (await c.get("/api/v1/tools/specs", headers=user("alice"))).json()
    names = [s["name"] for s in specs]
    assert "add" in names and "ping" in names and len(names) == len(set(names))
    add = next(s for s in specs if s["name"] == "add")
    assert add["kind"] == "tool_module" and add["call"] == "/api/v1/tools/id/keeper/call/add"
    assert set(add["spec"]["parameters"]["properties"]) == {"a", "b"}
    doc = (await c.get("/api/v1/tools/server/openapi.json", headers=user("alice"))).json()
    assert set(doc["paths"]) == {f"/{n}" for n in names}
    r = await c.post("/api/v1/tools/server/add", json={"a": 2, "b": 3}, headers=user("alice"))
    assert r.status_code == 200 and r.json() == 5, r.text  # the tool's own value, as a tool server answers


async def test_requirements_are_installed_once_into_a_read_only_layer(client: httpx.AsyncClient) -> None:
    content = (
        '"""\ntitle: Layered\nrequirements: exectool-dep>=1\n"""\n'
        "import exectool_dep\n\n\nclass Tools:\n"
        "    def value(self) -> str:\n        import os\n"
        "        try:\n            open(os.path.join(os.path.dirname(exectool_dep.__file__), 'x'), 'w')\n"
        "            writable = 'writable'\n        except OSError:\n            writable = 'read-only'\n"
        "        return f'{exectool_dep.VALUE}, {writable}'\n"
    )
    form = {"id": "layered", "name": "L", "content": content, "meta": {"description": ""}, "access_grants": PUBLIC}
    r = await client.post("/api/v1/tools/create", json=form, headers=admin())
    assert r.status_code == 200, r.text
    build = (await client.get("/api/v1/tools/id/layered/build", headers=admin())).json()
    assert build["status"] == "ready" and build["requirements"] == ["exectool-dep>=1"]
    assert (await client.get("/api/v1/tools/id/layered/build", headers=user("alice"))).status_code == 404
    r = await client.post("/api/v1/tools/id/layered/call/value", json={}, headers=user("alice"))
    assert r.json()["result"] == "from the layer, read-only", r.text
    missing = {**form, "id": "missing", "content": content.replace("exectool-dep>=1", "exectool-nothing")}
    r = await client.post("/api/v1/tools/create", json=missing, headers=admin())
    assert r.status_code == 400 and r.json()["error"] == "requirements_build_failed", r.text
    assert (await client.get("/api/v1/tools/id/missing", headers=admin())).status_code == 404


async def test_restricted_mode_runs_a_tool_under_the_policy(client: httpx.AsyncClient) -> None:
    content = (
        '"""\ntitle: Calc\n"""\nfrom pydantic import BaseModel, Field\n\n\nclass Tools:\n'
        "    class Valves(BaseModel):\n        scale: int = Field(1)\n\n"
        "    def __init__(self):\n        self.valves = self.Valves()\n\n"
        '    def mul(self, a: int, b: int) -> int:\n        """\n        Multiply.\n        :param a: a\n'
        '        :param b: b\n        """\n        return a * b * self.valves.scale\n'
    )
    form = {"id": "calc", "name": "C", "content": content, "meta": {"description": ""}, "access_grants": PUBLIC,
            "restricted": True}  # fmt: skip
    r = await client.post("/api/v1/tools/create", json=form, headers=admin())
    assert r.status_code == 200 and r.json()["restricted"] is True, r.text
    await client.post("/api/v1/tools/id/calc/valves/update", json={"scale": 10}, headers=admin())
    r = await client.post("/api/v1/tools/id/calc/call/mul", json={"arguments": {"a": 6, "b": 7}}, headers=user("bob"))
    assert r.json()["result"] == "420", r.text
    escape = content.replace("return a * b * self.valves.scale", "return ().__class__.__subclasses__()")
    r = await client.post("/api/v1/tools/create", json={**form, "id": "escape", "content": escape}, headers=admin())
    assert r.status_code == 400, r.text
    assert any("__subclasses__" in line or "__class__" in line for line in r.json()["traceback"]), r.json()
