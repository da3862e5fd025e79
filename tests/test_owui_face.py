"""The tool-server face (``/api/v1/tools/server``) against what Open WebUI 0.12.4's own client saw.

tests/data/owui/face.json was made by tests/data/owui/generate_owui_face.py: Open WebUI's published
``get_tool_servers_data``/``get_tools``/``execute_tool_server``/``process_tool_result`` run against this service.
Here, with no open-webui installed, the same tools are registered in a fresh service and:

- the document, converted by our own port of ``convert_openapi_to_tool_payload`` (executor/openapi/convert.py),
  gives exactly the tool payload Open WebUI derived, and its ``clean_openai_tool_schema`` (our ``clean_spec``)
  exactly the specs it offered the model;
- each recorded request, replayed byte for byte, gets the answer Open WebUI got (read the way
  ``execute_tool_server`` reads it);
- our own call route's ToolResult (``process_tool_result`` ported) agrees with what Open WebUI's
  ``process_tool_result`` gives the same function as a local tool module, whenever the call succeeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from executor.openapi.convert import convert_openapi_to_tool_payload
from executor.openapi.toollist import clean_spec
from executor.settings import Settings
from executor.tools.published import face_answer, module_functions, openapi_document
from executor.tools.records import ToolRecord
from sandboxes.base import instance_id
from tests.conftest import INSTANCES, Service

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests/data/owui/face.json").read_text())
ADMIN = "face-admin-key-test"
FORWARD = "face-forward-key-test"
FACE = "/api/v1/tools/server"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# The answer headers execute_tool_server and process_tool_result read.
READ_HEADERS = ("content-type", "content-disposition", "location")


@pytest.fixture
def settings(data_dir: Path, cache_dir: Path) -> Settings:
    INSTANCES.add(instance_id(data_dir.resolve()))
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        admin_api_keys=[ADMIN],
        forward_identity_api_keys=[FORWARD],
        data_dir=data_dir,
        cache_dir=cache_dir,
        backend="local",
        pool_size=0,
        default_timeout_s=30,
    )


def _keys(value: str) -> str:
    return value.replace("{forward_key}", FORWARD).replace("{admin_key}", ADMIN)


def _scrub(value: Any) -> Any:
    """The generator's placeholders for what changes between runs (pid, object addresses)."""
    if isinstance(value, str):
        value = re.sub(r'("pid": )\d+', r'\1"{pid}"', value)
        return re.sub(r" at 0x[0-9a-f]+>", " at 0x{address}>", value)
    if isinstance(value, dict):
        return {k: ("{pid}" if k == "pid" and isinstance(v, int) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _as_execute_tool_server(r: httpx.Response) -> Any:
    """What Open WebUI's execute_tool_server makes of an answer: the error text, JSON, text, or a data URL."""
    if r.status_code >= 400:
        return {"error": f"HTTP error {r.status_code}: {r.text}"}
    content_type = r.headers.get("content-type", "").split(";")[0].strip()
    if re.match(r"^application/(?:[\w.+-]+?\+)?json", content_type):
        return r.json()
    assert content_type.startswith("text/"), content_type
    return r.text


def _files_and_embeds(result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """A ToolResult's outputs as process_tool_result's files and embeds."""
    files: list[dict[str, Any]] = []
    embeds: list[str] = []
    for out in result["outputs"]:
        if out["type"] == "html":
            embeds.append(out["data"])
        elif out["type"] == "image":
            files.append({"type": "image", "url": f"data:{out['mime_type']};base64,{out['data']}"})
        else:
            files.append({"type": "data", "content": f"data:{out['mime_type']};base64,{out['data']}"})
    return files, embeds


async def _register(c: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for tool in GOLDEN["registered"]:
        form = {
            "id": tool["id"],
            "name": tool["id"].title(),
            "content": (ROOT / tool["file"]).read_text(),
            "meta": {"description": f"The {tool['id']} test tool"},
            "access_grants": tool["access_grants"],
        }
        r = await c.post("/api/v1/tools/create", json=form, headers=admin)
        assert r.status_code == 200, r.text
    r = await c.post("/api/v1/tools/id/keeper/valves/update", json=GOLDEN["valves"], headers=admin)
    assert r.status_code == 200, r.text
    alice = {"Authorization": f"Bearer {FORWARD}", "X-OpenWebUI-User-Id": GOLDEN["stubs"]["user"]["id"]}
    r = await c.post("/api/v1/tools/id/keeper/valves/user/update", json=GOLDEN["user_valves"], headers=alice)
    assert r.status_code == 200, r.text


async def test_open_webui_lists_and_calls_the_face(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as c:
        await _register(c)

        # The listing: fetched as Open WebUI fetches it (the key alone, no user), converted by our port.
        (listing,) = GOLDEN["listing_request"]
        r = await c.get(listing["path"], headers={k: _keys(v) for k, v in listing["headers"].items()})
        assert r.status_code == listing["status"] == 200, r.text
        document = r.json()
        assert document["paths"] == GOLDEN["openapi"]["paths"]
        ours = [{k: v for k, v in f.items() if k != "type"} for f in convert_openapi_to_tool_payload(document)]
        assert ours == GOLDEN["tool_payload"]
        # Then add_terminal_display_file_inline_param: only display_file changes (inline and page added).
        changed = [t["name"] for t, s in zip(ours, GOLDEN["server_data"]["specs"], strict=True) if t != s]
        assert changed == ["display_file"]
        ours = GOLDEN["server_data"]["specs"]
        assert [clean_spec(f) for f in ours] == [t["spec"] for t in GOLDEN["tools"]]
        names = [t["name"] for t in GOLDEN["tools"]]
        assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
        ops = [op["post"]["operationId"] for op in document["paths"].values()]
        assert ops == names and list(document["paths"]) == [f"/{n}" for n in names]

        # Each call Open WebUI made, replayed as sent.
        for call in GOLDEN["calls"]:
            sent = call["request"]
            headers = {k: _keys(v) for k, v in sent["headers"].items() if k.lower() != "content-length"}
            r = await c.request(sent["method"], sent["path"], content=sent["raw_body"].encode(), headers=headers)
            assert r.status_code == sent["status"], (call["function"], r.text)
            expected = call["execute_tool_server"]
            assert _scrub(_as_execute_tool_server(r)) == expected["data"], call["function"]
            if expected["headers"] is not None:
                got = {k: r.headers[k] for k in READ_HEADERS if k in r.headers}
                assert got == {k: v for k, v in expected["headers"].items() if k in READ_HEADERS}, call["function"]
            if r.status_code >= 400:  # our one error shape
                assert set(r.json()) == {"detail", "error", "field"}, r.text

        # Our own call route shapes the same values as process_tool_result does for a local tool module.
        sent = GOLDEN["calls"][0]["request"]["headers"]  # the user headers Open WebUI forwarded
        alice = {k: _keys(v) for k, v in sent.items() if k.lower() == "authorization" or k.startswith("X-OpenWebUI")}
        for call in GOLDEN["calls"]:
            local = call["local_process_tool_result"]
            tool, function = call["tool"]["id"], call["tool"]["function"]
            own = document["paths"][f"/{call['function']}"]["post"]
            declared = own.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            arguments = {k: v for k, v in call["model_arguments"].items() if k in declared.get("properties", {})}
            r = await c.post(f"/api/v1/tools/id/{tool}/call/{function}", json={"arguments": arguments}, headers=alice)
            if r.status_code != 200 or r.json()["status"] != "ok":
                continue  # an error: both sides report one, in their own words
            assert local is not None, call["function"]
            result = r.json()
            text = _scrub(result["result"])
            if function == "whoami":  # the second call in alice's keeper sandbox: the tool counts its calls
                text = text.replace('"calls": 2', '"calls": 1')
            files, embeds = _files_and_embeds(result)
            assert (text, files, embeds) == (local["text"], local["files"], local["embeds"]), call["function"]

        # Names do not depend on who asks: alice's own list is the key's plus what only she may read.
        r = await c.get(f"{FACE}/openapi.json", headers=alice)
        assert r.status_code == 200
        alice_ops = [op["post"]["operationId"] for op in r.json()["paths"].values()]
        assert alice_ops == [*names, "ping"]
        bob = {**alice, "X-OpenWebUI-User-Id": "bob"}
        r = await c.post(f"{FACE}/ping", json={}, headers=bob)
        assert r.status_code == 404 and r.json()["error"] == "function_not_found", r.text

        # No trailing-slash redirects (Open WebUI does not follow redirects by default).
        r = await c.get(f"{FACE}/openapi.json/", headers={"Authorization": f"Bearer {FORWARD}"})
        assert r.status_code == 200 and r.json()["paths"] == document["paths"]
        r = await c.post(f"{FACE}/facets_add/", json={"a": 1}, headers=alice)
        assert r.status_code == 200 and r.json() == 2, r.text
        r = await c.post(f"{FACE}/nothing", headers=alice)  # no body at all: no arguments
        assert r.status_code == 200 and r.json() is None, r.text


def _record(tool_id: str, *functions: str) -> ToolRecord:
    specs = [{"name": f, "description": f, "parameters": {"type": "object", "properties": {}}} for f in functions]
    return ToolRecord(id=tool_id, user_id=None, name=tool_id, content="", content_hash="", specs=specs, meta={})


def test_names_are_unique_valid_function_names() -> None:
    long = "x" * 70
    tools = [
        _record("alpha", "search", "données", long),
        _record("beta", "search", long),
        _record("gamma", "alpha_search", "search"),
    ]
    published = module_functions(tools, set())
    names = [f.name for f in published]
    assert names[:2] == ["search", "donn_es"]
    assert names[3] == "beta_search" and names[5] == "alpha_search"
    assert len(set(names)) == len(names), names
    assert all(NAME.match(n) for n in names), names
    assert [(f.tool_id, f.function) for f in published] == [
        ("alpha", "search"), ("alpha", "données"), ("alpha", long), ("beta", "search"), ("beta", long),
        ("gamma", "alpha_search"), ("gamma", "search"),
    ]  # fmt: skip
    document = openapi_document(published, version="1")
    ops = [p["post"]["operationId"] for p in document["paths"].values()]
    assert ops == names
    assert all("requestBody" not in p["post"] for p in document["paths"].values())  # no parameters, no body


@pytest.mark.parametrize(
    ("encoded", "media_type", "body"),
    [
        ({"type": "none"}, "application/json", b"null"),
        ({"type": "str", "value": "hé"}, "application/json", '"hé"'.encode()),
        ({"type": "scalar", "value": 7, "text": "7"}, "application/json", b"7"),
        ({"type": "scalar", "value": None, "text": "nan"}, "text/plain", b"nan"),
        ({"type": "json", "value": {"a": [1]}}, "application/json", b'{"a": [1]}'),
        ({"type": "repr", "value": "a thing"}, "text/plain", b"a thing"),
        ({"type": "tuple", "items": [{"type": "str", "value": "a"}, {"type": "str", "value": "b"}]},
         "text/plain", b'"a"'),
        ({"type": "response", "html": True, "status_code": 200, "headers": {"content-disposition": "inline"},
          "body": "<b>x</b>"}, "text/html", b"<b>x</b>"),
        ({"type": "response", "html": True, "status_code": 200, "headers": {}, "body": "<b>x</b>"},
         "text/plain", b"<b>x</b>"),
        ({"type": "response", "html": True, "status_code": 404, "headers": {"Content-Disposition": "inline"},
          "body": "<b>x</b>"}, "text/plain",
         b'{\n  "status": "error",\n  "code": "ui_component",\n  "message": "f: Client error 404 from embedded UI '
         b'result."\n}'),
    ],
)  # fmt: skip
def test_face_answer(encoded: dict[str, Any], media_type: str, body: bytes) -> None:
    answer = face_answer(encoded, "f", 1 << 20)
    assert (answer.media_type, answer.body) == (media_type, body)
    assert answer.headers == ({"Content-Disposition": "inline"} if media_type == "text/html" else {})


def test_face_answer_too_large_is_the_cut_text() -> None:
    answer = face_answer({"type": "json", "value": {"k": "v" * 500}}, "f", 100)
    assert answer.media_type == "text/plain"
    assert answer.body.decode().endswith("[... result truncated]") and len(answer.body) < 200
