"""Regenerate face.json: Open WebUI 0.12.4's own tool-server client run against this service's tool-server face.

The face (``/api/v1/tools/server``) publishes every tool-module function a caller may use as one OpenAPI tool
server. This script starts the service for real (``python -m executor serve`` from the worktree, as a
subprocess, real kernels), registers ``tests/data/tool_modules/keeper.py`` readable by everyone, and then lets
Open WebUI's published code do what the app does for a tool-server connection

    {type: openapi, url: http://127.0.0.1:PORT/api/v1/tools/server, path: openapi.json, spec_type: url,
     auth_type: bearer, key: <a forward-identity key>, config: {enable: true}, info: {id: executor, ...}}

with ``ENABLE_FORWARD_USER_INFO_HEADERS`` on:

1. ``get_tool_servers_data([connection])`` (what ``set_tool_servers`` runs at start-up and on config saves):
   ``get_tool_server_url`` + ``get_tool_server_data`` fetch the document over HTTP, then
   ``convert_openapi_to_tool_payload`` and ``add_terminal_display_file_inline_param`` give the specs;
2. ``get_tools(request, ["server:executor"], user, extra_params)``: the model's tool list (names, specs after
   ``clean_openai_tool_schema``) and one callable per function;
3. each call as ``execute_tool_call`` does it: arguments filtered to the spec's properties, then the callable,
   which runs ``build_tool_server_headers`` (bearer key, ``X-OpenWebUI-User-*``, chat and message ids) and
   ``execute_tool_server`` over HTTP; then ``process_tool_result(request, name, result, "external", ...)``.

Run it (see generate_owui_access.py for the venv and the wheel):

    /tmp/owui-access-venv/bin/python tests/data/owui/generate_owui_face.py \
        /tmp/owui-dl/open_webui-0.12.4-py3-none-any.whl

Like generate_owui_access.py, nothing of open-webui is imported: the named top-level definitions are taken out
of the wheel with ``ast`` and executed byte for byte, with small named stubs for the rest of the app (listed
under "stubs" in face.json). Every HTTP request the published code sends is recorded as sent (an aiohttp
``TraceConfig`` on the sessions it opens; the requests still go to the real service). Output is deterministic:
the port, the keys, the pid and aiohttp's User-Agent are replaced by placeholders, Date/Server dropped.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from fastapi.responses import HTMLResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_owui_access import (
    MIDDLEWARE,
    TOOLS,
    VERSION,
    Wheel,
    dump,
    env_constants,
    load_tools_namespace,
    user_obj,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PYTHON = os.environ.get("EXECUTOR_PYTHON", "/work/main/.venv/bin/python")
ADMIN_KEY = "face-admin-key-0001"
FORWARD_KEY = "face-forward-key-0001"
SERVER_ID = "executor"
FACE_PATH = "/api/v1/tools/server"
USER = {"id": "alice", "name": "Alice Zoë", "email": "alice@example.com", "role": "user"}
METADATA = {"chat_id": "chat-1", "message_id": "msg-1", "session_id": "sess-1"}
VALVES = {"api_key": "valve-secret", "retries": 3}
USER_VALVES = {"units": "imperial", "token": "alice-token"}
# (function, the model's arguments): arguments the spec does not declare are dropped by execute_tool_call.
# The tools registered, in order: (id, file, grants). "other" is readable by alice only.
PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
TOOL_FILES: list[tuple[str, str, list[dict[str, str]]]] = [
    ("keeper", "keeper.py", PUBLIC),
    ("facets", "facets.py", PUBLIC),
    ("other", "other.py", [{"principal_type": "user", "principal_id": USER["id"], "permission": "read"}]),
]
# (name Open WebUI lists, the model's arguments): arguments the spec does not declare are dropped by
# execute_tool_call.
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("add", {"a": 2, "b": 3}),
    ("add", {"a": 2, "b": "3", "c": "dropped by Open WebUI"}),
    ("add", {"a": 2}),
    ("whoami", {}),
    ("embed", {}),
    ("picture", {}),
    ("countdown", {"n": 2}),
    ("fail", {"why": "boom"}),
    ("confirm", {"what": "delete"}),
    ("facets_add", {"a": 40}),
    ("display_file", {"path": "a.txt", "inline": True, "page": 2}),
    ("nothing", {}),
    ("flag", {"on": False}),
    ("ratio", {"x": 3}),
    ("gallery", {}),
    ("report", {}),
    ("framed", {}),
    ("page", {}),
    ("raw", {}),
    ("pair", {}),
    ("thing", {}),
    ("nan", {}),
]
KEPT_RESPONSE_HEADERS = ("content-type", "content-disposition", "location", "content-length")
DROPPED_REQUEST_HEADERS = ("host", "user-agent", "accept-encoding")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, key: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {url}: {exc.code} {exc.read()[:2000]!r}") from None


class Service:
    """``python -m executor serve`` in a fresh data dir on a free port."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="owui-face-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EXECUTOR_")},
            "PYTHONPATH": str(ROOT),
            "EXECUTOR_DATA_DIR": f"{self.tmp.name}/data",
            "EXECUTOR_ADMIN_API_KEYS": ADMIN_KEY,
            "EXECUTOR_FORWARD_IDENTITY_API_KEYS": FORWARD_KEY,
            "EXECUTOR_PORT": str(self.port),
            "EXECUTOR_POOL_SIZE": "0",
        }
        self.log = open(f"{self.tmp.name}/service.log", "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "executor", "serve"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(Path(f"{self.tmp.name}/service.log").read_text()[-4000:]) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the service ends its kernels and work dirs
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


class Recorder:
    """Every request an aiohttp session opened by the published code sends, and the answer's status/headers."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.records: list[dict[str, Any]] = []

    def trace(self) -> aiohttp.TraceConfig:
        tc = aiohttp.TraceConfig()

        async def start(session: Any, ctx: Any, params: Any) -> None:
            ctx.record = {"method": params.method, "url": str(params.url), "body": b""}
            self.records.append(ctx.record)

        async def chunk(session: Any, ctx: Any, params: Any) -> None:
            ctx.record["body"] += params.chunk

        async def headers_sent(session: Any, ctx: Any, params: Any) -> None:
            ctx.record["headers"] = {k: v for k, v in params.headers.items()}

        async def end(session: Any, ctx: Any, params: Any) -> None:
            ctx.record["status"] = params.response.status

        tc.on_request_start.append(start)
        tc.on_request_chunk_sent.append(chunk)
        tc.on_request_headers_sent.append(headers_sent)
        tc.on_request_end.append(end)
        return tc

    def module(self) -> types.SimpleNamespace:
        """Stands in for ``aiohttp`` in the published code's globals: the same, with every session traced."""

        def client_session(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
            kwargs["trace_configs"] = [*kwargs.get("trace_configs", []), self.trace()]
            return aiohttp.ClientSession(*args, **kwargs)

        names = {k: getattr(aiohttp, k) for k in dir(aiohttp) if not k.startswith("_")}
        return types.SimpleNamespace(**{**names, "ClientSession": client_session})

    def take(self) -> list[dict[str, Any]]:
        out = [self.clean_request(r) for r in self.records]
        self.records.clear()
        return out

    def clean_request(self, r: dict[str, Any]) -> dict[str, Any]:
        url = r["url"]
        assert url.startswith(self.service.base), url
        body = r["body"].decode()
        headers = {
            k: scrub(v) for k, v in sorted(r.get("headers", {}).items()) if k.lower() not in DROPPED_REQUEST_HEADERS
        }
        return {
            "method": r["method"],
            "path": url[len(self.service.base) :],
            "headers": headers,
            "raw_body": body,
            "json_body": json.loads(body) if body else None,
            "status": r.get("status"),
        }


def scrub(value: Any) -> Any:
    """Placeholders for what changes between runs (keys, port, pid, object addresses in reprs)."""
    if isinstance(value, str):
        value = value.replace(FORWARD_KEY, "{forward_key}").replace(ADMIN_KEY, "{admin_key}")
        value = re.sub(r" at 0x[0-9a-f]+>", " at 0x{address}>", value)
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:{port}", value)
    if isinstance(value, dict):
        return {k: ("{pid}" if k == "pid" and isinstance(v, int) else scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def scrub_text(text: Any) -> Any:
    """process_tool_result's text: JSON of a dict with a pid gets the placeholder too."""
    if isinstance(text, str):
        text = re.sub(r'("pid": )\d+', r'\1"{pid}"', text)
    return scrub(text)


def register(service: Service) -> list[dict[str, Any]]:
    out = []
    for tool_id, file, grants in TOOL_FILES:
        form = {
            "id": tool_id,
            "name": tool_id.title(),
            "content": (ROOT / "tests/data/tool_modules" / file).read_text(),
            "meta": {"description": f"The {tool_id} test tool"},
            "access_grants": grants,
        }
        created = http("POST", f"{service.base}/api/v1/tools/create", ADMIN_KEY, form)
        out.append({"id": created["id"], "file": f"tests/data/tool_modules/{file}", "access_grants": grants})
    http("POST", f"{service.base}/api/v1/tools/id/keeper/valves/update", ADMIN_KEY, VALVES)
    user_headers = {"X-OpenWebUI-User-Id": USER["id"]}
    http("POST", f"{service.base}/api/v1/tools/id/keeper/valves/user/update", FORWARD_KEY, USER_VALVES, user_headers)
    return out


def local_tools() -> dict[str, Any]:
    """The test tool files imported here (trusted test data), for what Open WebUI gives the same value locally."""
    import importlib.util

    out = {}
    for tool_id, file, _ in TOOL_FILES:
        spec = importlib.util.spec_from_file_location(f"tool_{tool_id}", ROOT / "tests/data/tool_modules" / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[tool_id] = module.Tools()
    return out


def response_headers(headers: Any) -> dict[str, str] | None:
    if headers is None:
        return None
    return {k.lower(): scrub(v) for k, v in headers.items() if k.lower() in KEPT_RESPONSE_HEADERS}


def run(wheel: Wheel, service: Service) -> dict[str, Any]:
    defaults = env_constants(wheel)
    defaults["ENABLE_FORWARD_USER_INFO_HEADERS"] = True  # the connection's deployment turns it on
    ns = load_tools_namespace(wheel, defaults)
    recorder = Recorder(service)
    ns["aiohttp"] = recorder.module()
    # get_tool_server_data's YAML fallback is never reached for a JSON document.
    ns["yaml"] = types.SimpleNamespace(safe_load=lambda text: (_ for _ in ()).throw(AssertionError("yaml")))
    timeout_data = wheel.env_defaults("open_webui/env.py", ["_tool_data_timeout_raw"])["_tool_data_timeout_raw"]
    ns["AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER_DATA"] = int(timeout_data)
    ns["AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER"] = 300  # AIOHTTP_CLIENT_TIMEOUT's default; kernels start slowly
    wheel.load(TOOLS, ["get_tool_server_data", "get_tool_server_url"], ns)
    ns_mw = wheel.load(
        MIDDLEWARE,
        ["log", "BASE64_IMAGE_DATA_URI_RE", "extract_base64_images", "process_tool_result"],
        {"logging": ns["logging"], "re": re, "json": json, "Any": Any, "HTMLResponse": HTMLResponse,
         "JSONCodec": json},
    )  # fmt: skip
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)

    connection = {
        "type": "openapi",
        "url": service.base + FACE_PATH,
        "path": "openapi.json",
        "spec_type": "url",
        "auth_type": "bearer",
        "key": FORWARD_KEY,
        "config": {"enable": True},
        "info": {"id": SERVER_ID, "name": "Executor", "description": "Tool modules"},
    }
    state: dict[str, Any] = {}

    async def get_tool_servers(request: Any) -> list[dict[str, Any]]:
        return copy.deepcopy(state["servers"])

    class Config:
        @staticmethod
        async def get(key: str, default: Any = None) -> Any:
            assert key == "tool_server.connections", key
            return [copy.deepcopy(connection)]

    class Groups:
        @staticmethod
        async def get_groups_by_member_id(user_id: str, **kwargs: Any) -> list:
            return []

    class Tools:
        @staticmethod
        async def get_tools_by_ids(ids: list[str]) -> dict:
            raise AssertionError("only server: tool ids are used")

    async def has_connection_access(user: Any, connection: dict, user_group_ids: Any = None) -> bool:
        return True

    ns.update(get_tool_servers=get_tool_servers, Config=Config, Groups=Groups, Tools=Tools,
              has_connection_access=has_connection_access)  # fmt: skip
    user = user_obj(USER)
    request = types.SimpleNamespace(cookies={}, state=types.SimpleNamespace())
    extra_params = {"__user__": dict(USER), "__metadata__": dict(METADATA)}

    async def main() -> dict[str, Any]:
        servers = await ns["get_tool_servers_data"]([copy.deepcopy(connection)])
        assert len(servers) == 1, "the face's document was refused (see the service log)"
        state["servers"] = servers
        listing = recorder.take()
        tools = await ns["get_tools"](request, [f"server:{SERVER_ID}"], user, extra_params)
        assert not recorder.records, "get_tools must not fetch anything"
        calls = []
        locals_ = local_tools()
        for name, args in CALLS:
            tool = tools[name]
            allowed = tool["spec"].get("parameters", {}).get("properties", {}).keys()
            params = {k: v for k, v in args.items() if k in allowed}  # execute_tool_call's filter
            try:
                result = await tool["callable"](**params)
            except Exception as e:  # as execute_tool_call does
                result = {"error": str(e)}
            data, headers = result if isinstance(result, tuple) else (result, None)
            data = copy.deepcopy(data)  # process_tool_result removes data: URLs from a list in place
            text, files, embeds = await ns_mw["process_tool_result"](
                request, name, result, tool.get("type", ""), False, dict(METADATA), user
            )
            sent = recorder.take()
            assert len(sent) == 1, sent
            # The tool is the operation's tag; the function its name without the collision prefix.
            owner = servers[0]["openapi"]["paths"][f"/{name}"]["post"]["tags"][0]
            function = name if hasattr(locals_[owner], name) else name.removeprefix(f"{owner}_")
            method = getattr(locals_[owner], function)
            local = None
            if "__event_call__" not in inspect.signature(method).parameters:
                # The same function as a local tool module, the way get_tools and execute_tool_call run it:
                # valves set, the extra params it declares bound (get_async_tool_function_and_apply_extra_params,
                # which also coerces "3" to 3 for an int), the model's arguments filtered to the tool's own
                # spec; then process_tool_result with tool_type "".
                tools_obj = locals_[owner]
                if hasattr(tools_obj, "Valves") and owner == "keeper":
                    tools_obj.valves = tools_obj.Valves(**VALVES)
                local_user = dict(USER)
                if hasattr(tools_obj, "UserValves"):
                    local_user["valves"] = tools_obj.UserValves(**USER_VALVES)

                async def emitter(event: Any) -> None:
                    pass

                bound = await ns["get_async_tool_function_and_apply_extra_params"](
                    method,
                    {"__user__": local_user, "__id__": owner, "__metadata__": dict(METADATA),
                     "__event_emitter__": emitter, "__messages__": [], "__files__": []},
                )  # fmt: skip
                op = servers[0]["openapi"]["paths"][f"/{name}"]["post"]
                schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
                own = schema.get("properties") or {}
                try:
                    value = await bound(**{k: v for k, v in args.items() if k in own})
                except Exception as e:
                    value = {"error": str(e)}
                ltext, lfiles, lembeds = await ns_mw["process_tool_result"](
                    request, name, value, "", False, dict(METADATA), user
                )
                local = {"text": scrub_text(ltext), "files": lfiles, "embeds": lembeds}
            calls.append(
                {
                    "function": name,
                    "model_arguments": args,
                    "params": params,
                    "request": sent[0],
                    "execute_tool_server": {"data": scrub(data), "headers": response_headers(headers)},
                    "process_tool_result": {"text": scrub_text(text), "files": files, "embeds": embeds},
                    "tool": {"id": owner, "function": function},
                    "local_process_tool_result": local,
                }
            )
        return {
            "listing_request": listing,
            # convert_openapi_to_tool_payload alone (server_data's specs also went through
            # add_terminal_display_file_inline_param, which adds inline and page to any display_file).
            "tool_payload": ns["convert_openapi_to_tool_payload"](servers[0]["openapi"]),
            "server_data": scrub({k: v for k, v in servers[0].items() if k != "openapi"}),
            "openapi": scrub(servers[0]["openapi"]),
            "tools": [
                {"name": n, "spec": t["spec"], "tool_id": t["tool_id"], "type": t.get("type")} for n, t in tools.items()
            ],
            "calls": calls,
        }

    out = asyncio.run(main())
    return {
        "stubs": {
            "ENABLE_FORWARD_USER_INFO_HEADERS": True,
            "ENABLE_TOOL_SERVERS": ns["ENABLE_TOOL_SERVERS"],
            "AIOHTTP_CLIENT_ALLOW_REDIRECTS": ns["AIOHTTP_CLIENT_ALLOW_REDIRECTS"],
            "AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER_DATA": ns["AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER_DATA"],
            "AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER": "300 (the app: AIOHTTP_CLIENT_TIMEOUT, 300 by default)",
            "JSONCodec": "stdlib json (ENABLE_ORJSON's default selects orjson; same values here)",
            "get_tool_servers": "returns what get_tool_servers_data returned (app.state.TOOL_SERVERS)",
            "Config.get('tool_server.connections')": "[connection]",
            "Groups.get_groups_by_member_id": "[]",
            "has_connection_access": "always True",
            "request": "object with cookies {} (forward_cookies is off)",
            "user": USER,
            "extra_params": extra_params,
            "aiohttp": "the real module; ClientSession adds a recording TraceConfig",
        },
        **out,
    }


def main() -> None:
    wheel = Wheel(Path(sys.argv[1]))
    service = Service()
    try:
        registered = register(service)
        result = run(wheel, service)
    finally:
        service.stop()
    dump(
        "face.json",
        {
            "source": f"open-webui {VERSION} {TOOLS}:get_tool_servers_data, get_tool_server_data, "
            f"convert_openapi_to_tool_payload, get_tools, build_tool_server_headers, execute_tool_server; "
            f"{MIDDLEWARE}:process_tool_result",
            "generator": "tests/data/owui/generate_owui_face.py",
            "wheel_sha256": wheel.sha256,
            "note": (
                "Open WebUI's own tool-server client against this service's face (a real service, real kernels). "
                "connection is what an admin adds; listing_request is the document fetch (the key alone: no user "
                "headers); tool_payload is convert_openapi_to_tool_payload(openapi); server_data is "
                "get_tool_servers_data's entry (specs also through add_terminal_display_file_inline_param); tools "
                "is get_tools' output (name, spec, tool_id, type; callables omitted). Each call records the "
                "request as sent (headers minus Host/User-Agent/Accept-Encoding), what execute_tool_server "
                "returned (data, and the response headers process_tool_result reads), process_tool_result's "
                "(text, files, embeds) with tool_type 'external', and local_process_tool_result: what Open WebUI "
                "gives the same function run as a local tool module (get_async_tool_function_and_apply_extra_params"
                ", tool_type ''; null for a function that needs __event_call__). {port}, {forward_key}, "
                "{admin_key}, {pid} and {address} stand for what changes between runs."
            ),
            "connection": {
                "type": "openapi",
                "url": f"http://127.0.0.1:{{port}}{FACE_PATH}",
                "path": "openapi.json",
                "spec_type": "url",
                "auth_type": "bearer",
                "key": "{forward_key}",
                "config": {"enable": True},
                "info": {"id": SERVER_ID, "name": "Executor", "description": "Tool modules"},
            },
            "registered": registered,
            "valves": VALVES,
            "user_valves": USER_VALVES,
            "metadata": METADATA,
            **result,
        },
    )


if __name__ == "__main__":
    main()
