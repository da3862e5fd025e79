"""Regenerate the Open WebUI parity goldens in this folder: access.json, tool_list.json, calls.json, tokens.json.

Every expected value is produced by the published ``open-webui`` package itself, never by our code, and
open-webui is never a dependency of this project. How they were made (open-webui 0.12.4; the pins are the
ones the wheel's METADATA requires):

    python3 -m venv /tmp/owui-access-venv
    /tmp/owui-access-venv/bin/pip install aiohttp==3.14.5 fastapi==0.136.3 pyjwt==2.13.0 pytz==2026.2
    /tmp/owui-access-venv/bin/pip download --no-deps open-webui==0.12.4 -d /tmp/owui-dl
    /tmp/owui-access-venv/bin/python tests/data/owui/generate_owui_access.py \
        /tmp/owui-dl/open_webui-0.12.4-py3-none-any.whl

(aiohttp for ``execute_tool_server``, pyjwt for the tokens, fastapi only for starlette's ``HTMLResponse`` that
``process_tool_result`` tests against, pytz for ``create_token``'s ``UTC``.)

Importing ``open_webui`` drags in the whole application (database, redis, langchain, ...), so, like
``tests/data/openapi/generate_owui_payloads.py``, this script takes each module's source out of the wheel with
``ast`` and executes only the named top-level definitions, byte for byte as published, each module in its own
namespace (its "globals"). The names those definitions use from the rest of the app (``Groups``, ``Config``,
``get_tool_servers``, ``log``, env constants, ...) are small stubs, and each golden lists them under "stubs".
Env constants are taken at their defaults by evaluating their assignment in ``open_webui/env.py`` /
``open_webui/config.py`` with an empty environment (see ``env_defaults``); the goldens record those values.

``execute_tool_server`` really talks HTTP, to a recording server this script starts on 127.0.0.1 (free port);
recorded URLs have the ``http://127.0.0.1:PORT/base`` prefix replaced by ``{base}``. Output is deterministic
apart from tokens.json's tokens, ``iat``/``exp``/``jti``.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import copy
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
import types
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial, update_wrapper
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import punctuation
from typing import Any, Optional, get_args, get_type_hints
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from fastapi.responses import HTMLResponse
from pytz import UTC

HERE = Path(__file__).resolve().parent
VERSION = "0.12.4"
SECRET = "owui-test-secret"
FORWARD_SECRET = "owui-forward-secret"
FORWARD_EXPIRES = 10 * 365 * 86400

ACCESS = "open_webui/utils/access_control/__init__.py"
GRANTS = "open_webui/models/access_grants.py"
TOOLS = "open_webui/utils/tools.py"
MISC = "open_webui/utils/misc.py"
HEADERS = "open_webui/utils/headers.py"
AUTH = "open_webui/utils/auth.py"
MIDDLEWARE = "open_webui/utils/middleware.py"
ENV = "open_webui/env.py"
CONFIG = "open_webui/config.py"


##############################################################################
# Reading the wheel
##############################################################################


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.zf = zipfile.ZipFile(path)

    def source(self, module_path: str) -> str:
        return self.zf.read(module_path).decode()

    def load(self, module_path: str, names: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
        """Exec the named top-level definitions of ``module_path`` (plus its ``__future__`` import) in namespace."""
        tree = ast.parse(self.source(module_path))
        keep: list[ast.stmt] = []
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                keep.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
                keep.append(node)
                found.add(node.name)
            elif isinstance(node, ast.Assign):
                targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if targets & set(names):
                    keep.append(node)
                    found |= targets & set(names)
        missing = set(names) - found
        if missing:
            raise SystemExit(f"not found in {module_path}: {sorted(missing)}")
        namespace.setdefault("__name__", module_path[:-3].replace("/", "."))
        exec(compile(ast.Module(body=keep, type_ignores=[]), module_path, "exec"), namespace)
        return namespace

    def env_defaults(self, module_path: str, names: list[str]) -> dict[str, Any]:
        """Evaluate each name's first top-level assignment (also inside try:) with an empty environment.

        Names are evaluated in order and see the earlier ones, e.g. ENABLE_PLUGINS before ENABLE_TOOL_SERVERS.
        """
        tree = ast.parse(self.source(module_path))
        assigns: dict[str, ast.expr] = {}
        for node in tree.body:
            for stmt in [node, *(node.body if isinstance(node, ast.Try) else [])]:
                if isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            assigns.setdefault(t.id, stmt.value)
        empty_env: dict[str, str] = {}
        fake_os = types.SimpleNamespace(getenv=empty_env.get, environ=empty_env)
        ns: dict[str, Any] = {"os": fake_os}
        out: dict[str, Any] = {}
        for name in names:
            if name not in assigns:
                raise SystemExit(f"no assignment to {name} in {module_path}")
            ns[name] = out[name] = eval(compile(ast.Expression(assigns[name]), module_path, "eval"), ns)
        return out

    def source_of(self, module_path: str, name: str) -> str:
        return f"open-webui {VERSION} {module_path}:{name}"


def dump(name: str, data: dict[str, Any]) -> None:
    out = HERE / name
    out.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n")
    print(f"wrote {out.relative_to(HERE.parents[2])}")


@contextmanager
def fake_open_webui_config(**attrs: Any):
    """``has_connection_access`` does ``from open_webui.config import BYPASS_ADMIN_ACCESS_CONTROL`` per call."""
    saved = {k: sys.modules.get(k) for k in ("open_webui", "open_webui.config")}
    pkg = types.ModuleType("open_webui")
    pkg.__path__ = []  # type: ignore[attr-defined]
    cfg = types.ModuleType("open_webui.config")
    cfg.__dict__.update(attrs)
    pkg.config = cfg  # type: ignore[attr-defined]
    sys.modules["open_webui"], sys.modules["open_webui.config"] = pkg, cfg
    try:
        yield cfg
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class GroupsNeverQueried:
    @staticmethod
    async def get_groups_by_member_id(*args: Any, **kwargs: Any) -> list:
        raise AssertionError("Groups must not be queried: user_group_ids is always given")


class UserModel:  # annotation-only stand-in for open_webui.models.users.UserModel
    pass


class AsyncSession:  # annotation-only stand-in for sqlalchemy.ext.asyncio.AsyncSession
    pass


def user_obj(d: dict[str, Any]) -> types.SimpleNamespace:
    return types.SimpleNamespace(**d)


##############################################################################
# access.json
##############################################################################


def gen_access(wheel: Wheel) -> None:
    bypass_default = wheel.env_defaults(CONFIG, ["BYPASS_ADMIN_ACCESS_CONTROL"])["BYPASS_ADMIN_ACCESS_CONTROL"]
    ns_access = wheel.load(
        ACCESS,
        ["log", "has_access", "has_connection_access", "migrate_access_control"],
        {"logging": logging, "Any": Any, "AsyncSession": AsyncSession, "UserModel": UserModel},
    )
    ns_access["Groups"] = GroupsNeverQueried
    ns_grants = wheel.load(GRANTS, ["access_control_to_grants"], {"Optional": Optional})

    # migrate_access_control
    migrate = ns_access["migrate_access_control"]
    ac_rw = {
        "read": {"group_ids": ["group-r1", "group-r2"], "user_ids": ["user-r1"]},
        "write": {"group_ids": ["group-w1"], "user_ids": ["user-w1", "user-w2"]},
    }
    migrate_inputs = [
        ("no access_control key", {}),
        ("access_control null", {"access_control": None}),
        ("access_control empty dict", {"access_control": {}}),
        ("read and write, users and groups", {"access_control": ac_rw}),
        (
            "access_grants already present wins (nothing changes, access_control kept)",
            {
                "access_control": ac_rw,
                "access_grants": [{"principal_type": "user", "principal_id": "*", "permission": "read"}],
            },
        ),
        ("read only", {"access_control": {"read": {"group_ids": ["group-1"], "user_ids": ["user-1"]}}}),
        ("write only", {"access_control": {"write": {"group_ids": [], "user_ids": ["user-1"]}}}),
        ("read present but empty", {"access_control": {"read": {}, "write": {"user_ids": ["user-1"]}}}),
        (
            "other config keys are preserved",
            {"enable": True, "function_name_filter_list": "", "access_control": {"read": {"user_ids": ["u"]}}},
        ),
        ("access_control not a dict", {"access_control": "public"}),
    ]
    migrate_cases = []
    for desc, inp in migrate_inputs:
        data = copy.deepcopy(inp)
        returned = migrate(data)
        migrate_cases.append({"description": desc, "input": inp, "output": data, "returned": returned})

    # access_control_to_grants
    to_grants = ns_grants["access_control_to_grants"]
    structured = {
        "read": {"group_ids": ["group-1"], "user_ids": ["user-1", "user-2"]},
        "write": {"group_ids": ["group-2"], "user_ids": ["user-3"]},
    }
    grant_cases = []
    for resource_type in ["tool", "file"]:
        for ac in [None, {}, structured]:
            grant_cases.append(
                {
                    "resource_type": resource_type,
                    "resource_id": "res-1",
                    "access_control": ac,
                    "output": to_grants(resource_type, "res-1", copy.deepcopy(ac)),
                }
            )

    # has_connection_access
    hca = ns_access["has_connection_access"]
    user = {"id": "user-1", "role": "user"}
    admin = {"id": "admin-1", "role": "admin"}

    def conn(grants: Any = ..., **config: Any) -> dict[str, Any]:
        cfg = dict(config)
        if grants is not ...:
            cfg["access_grants"] = grants
        return {"url": "http://tools.invalid", "config": cfg}

    def g(ptype: str, pid: str, perm: str = "read") -> dict[str, str]:
        return {"principal_type": ptype, "principal_id": pid, "permission": perm}

    hca_inputs: list[tuple[str, dict, dict, list[str], bool]] = [
        ("no access_grants key, user", conn(enable=True), user, [], bypass_default),
        ("no access_grants key, admin", conn(enable=True), admin, [], bypass_default),
        ("no config at all, user", {"url": "http://tools.invalid"}, user, [], bypass_default),
        ("config null, admin", {"url": "http://tools.invalid", "config": None}, admin, [], bypass_default),
        ("empty list, user", conn([]), user, [], bypass_default),
        ("access_grants null, user", conn(None), user, [], bypass_default),
        ("user:* read", conn([g("user", "*")]), user, [], bypass_default),
        ("grant to this user", conn([g("user", "user-1")]), user, [], bypass_default),
        ("grant to another user", conn([g("user", "user-9")]), user, [], bypass_default),
        ("group grant, user in group", conn([g("group", "group-1")]), user, ["group-1", "group-2"], bypass_default),
        ("group grant, user not in group", conn([g("group", "group-1")]), user, ["group-2"], bypass_default),
        ("write-only grant, read is asked", conn([g("user", "user-1", "write")]), user, [], bypass_default),
        ("user:* write only", conn([g("user", "*", "write")]), user, [], bypass_default),
        ("non-dict grant entries are skipped", conn(["user:*", g("user", "user-1")]), user, [], bypass_default),
        (
            "admin, grants exclude admin, BYPASS at default",
            conn([g("user", "user-9")]),
            admin,
            [],
            bypass_default,
        ),
        (
            "admin, grants exclude admin, BYPASS flipped",
            conn([g("user", "user-9")]),
            admin,
            [],
            not bypass_default,
        ),
        ("admin, no grants, BYPASS flipped", conn(enable=True), admin, [], not bypass_default),
        ("admin, empty grants, BYPASS flipped", conn([]), admin, [], not bypass_default),
        ("admin, user:* read, BYPASS flipped", conn([g("user", "*")]), admin, [], not bypass_default),
        ("user, no grants, BYPASS flipped", conn(enable=True), user, [], not bypass_default),
    ]
    hca_cases = []
    for desc, connection, u, group_ids, bypass in hca_inputs:
        with fake_open_webui_config(BYPASS_ADMIN_ACCESS_CONTROL=bypass):
            got = asyncio.run(hca(user_obj(u), copy.deepcopy(connection), set(group_ids)))
        hca_cases.append(
            {
                "description": desc,
                "connection_config": connection.get("config"),
                "connection": connection,
                "user": u,
                "user_group_ids": group_ids,
                "BYPASS_ADMIN_ACCESS_CONTROL": bypass,
                "expected": got,
            }
        )

    dump(
        "access.json",
        {
            "source": f"open-webui {VERSION} {ACCESS}:migrate_access_control, {GRANTS}:access_control_to_grants, "
            f"{ACCESS}:has_connection_access",
            "note": "Three sections, each with its own source and cases.",
            "generator": "tests/data/owui/generate_owui_access.py",
            "wheel_sha256": wheel.sha256,
            "migrate_access_control": {
                "source": wheel.source_of(ACCESS, "migrate_access_control"),
                "note": "Mutates the dict in place and returns None; 'output' is the dict afterwards.",
                "cases": migrate_cases,
            },
            "access_control_to_grants": {
                "source": wheel.source_of(GRANTS, "access_control_to_grants"),
                "cases": grant_cases,
            },
            "has_connection_access": {
                "source": wheel.source_of(ACCESS, "has_connection_access"),
                "note": (
                    "Run with asyncio; calls the real has_access (same module) with permission 'read'. "
                    "user_group_ids is passed as a set (listed here), so Groups is never queried. "
                    "BYPASS_ADMIN_ACCESS_CONTROL is imported inside the function from open_webui.config; a stub "
                    "module supplies it per case."
                ),
                "BYPASS_ADMIN_ACCESS_CONTROL_default": bypass_default,
                "BYPASS_ADMIN_ACCESS_CONTROL_definition": (
                    "open_webui/config.py: os.getenv('BYPASS_ADMIN_ACCESS_CONTROL', "
                    "os.getenv('ENABLE_ADMIN_WORKSPACE_CONTENT_ACCESS', 'True')).lower() == 'true'"
                ),
                "stubs": {
                    "Groups.get_groups_by_member_id": "raises (never called)",
                    "open_webui.config.BYPASS_ADMIN_ACCESS_CONTROL": "per case, see each case",
                    "user": "object with id and role",
                },
                "cases": hca_cases,
            },
        },
    )


##############################################################################
# tool_list.json
##############################################################################


def _op(op_id: str, summary: str, params: list[dict] | None = None, body: dict | None = None) -> dict:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {"200": {"description": "OK"}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Item id"}
LIMIT_PARAM = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "default": 10}}

TOOL_SPECS = {
    "a": {
        "openapi": "3.0.3",
        "info": {"title": "Server A", "version": "1.0"},
        "paths": {
            "/items/{id}": {
                "get": _op("getItem", "Get an item (A)", [ID_PARAM]),
                "delete": _op("deleteItem", "Delete an item (A)", [ID_PARAM]),
            },
            "/items": {"get": _op("listItems", "List items (A)", [LIMIT_PARAM])},
        },
    },
    "b": {
        "openapi": "3.0.3",
        "info": {"title": "Server B", "version": "1.0"},
        "paths": {
            "/items/{id}": {"get": _op("getItem", "Get an item (B)", [ID_PARAM])},
            "/things": {
                "post": _op(
                    "createThing",
                    "Create a thing (B)",
                    body={
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "count": {"type": "integer", "nullable": True}},
                    },
                )
            },
        },
    },
    "c": {
        "openapi": "3.0.3",
        "info": {"title": "Server C", "version": "1.0"},
        "paths": {
            "/items/{id}": {"get": _op("getItem", "Get an item (C)", [ID_PARAM])},
            "/items": {"get": _op("listItems", "List items (C)", [LIMIT_PARAM])},
        },
    },
}


def _connection(server_id: str, **config: Any) -> dict[str, Any]:
    return {
        "type": "openapi",
        "url": f"http://tool-{server_id}.invalid/api/",
        "spec_type": "json",
        "spec": json.dumps(TOOL_SPECS[server_id]),
        "path": "openapi.json",
        "auth_type": "bearer",
        "key": "",
        "config": {"enable": True, **config},
        "info": {"id": server_id, "name": f"Server {server_id.upper()}", "description": f"Test server {server_id}"},
    }


def load_headers_namespace(wheel: Wheel, defaults: dict[str, Any]) -> dict[str, Any]:
    return wheel.load(
        HEADERS,
        [
            "log",
            "USER_GROUPS_PLACEHOLDERS",
            "normalize_bearer_token",
            "bearer_auth_header",
            "include_user_info_headers",
            "custom_headers_require_user_groups",
            "get_user_groups_for_custom_headers",
            "get_custom_headers",
            "parse_custom_headers",
            "_mint_forward_user_jwt",
        ],
        {
            "logging": logging,
            "time": time,
            "jwt": jwt,
            "quote": quote,
            "punctuation": punctuation,
            "Any": Any,
            "Optional": Optional,
            "Request": object,
            "Groups": GroupsNeverQueried,
            **{k: v for k, v in defaults.items() if k.startswith(("FORWARD_", "ENABLE_FORWARD"))},
        },
    )


def load_tools_namespace(wheel: Wheel, defaults: dict[str, Any]) -> dict[str, Any]:
    ns_misc = wheel.load(MISC, ["_strip_filter_entry", "get_allow_block_lists", "is_string_allowed"], {})
    ns_headers = load_headers_namespace(wheel, defaults)
    ns: dict[str, Any] = {
        "asyncio": asyncio,
        "base64": base64,
        "copy": copy,
        "inspect": inspect,
        "logging": logging,
        "re": re,
        "partial": partial,
        "update_wrapper": update_wrapper,
        "get_args": get_args,
        "get_type_hints": get_type_hints,
        "quote": quote,
        "urlencode": urlencode,
        "aiohttp": aiohttp,
        "JSONCodec": json,
        "is_string_allowed": ns_misc["is_string_allowed"],
        "bearer_auth_header": ns_headers["bearer_auth_header"],
        "get_custom_headers": ns_headers["get_custom_headers"],
        "include_user_info_headers": ns_headers["include_user_info_headers"],
        "normalize_bearer_token": ns_headers["normalize_bearer_token"],
        "Groups": GroupsNeverQueried,
        "AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER": None,
        "AIOHTTP_CLIENT_SESSION_TOOL_SERVER_SSL": True,
        **{k: v for k, v in defaults.items() if not k.startswith("_")},
    }
    wheel.load(
        TOOLS,
        [
            "log",
            "OPENAPI_HTTP_METHODS",
            "resolve_schema",
            "convert_openapi_to_tool_payload",
            "add_terminal_display_file_inline_param",
            "clean_properties",
            "clean_openai_tool_schema",
            "get_tool_servers_data",
            "get_tools",
            "get_async_tool_function_and_apply_extra_params",
            "build_tool_server_headers",
            "execute_tool_server",
        ],
        ns,
    )
    return ns


def env_constants(wheel: Wheel) -> dict[str, Any]:
    env = wheel.env_defaults(
        ENV,
        [
            "ENABLE_PLUGINS",
            "ENABLE_TOOLS",
            "ENABLE_TOOL_SERVERS",
            "ENABLE_ORJSON",
            "AIOHTTP_CLIENT_ALLOW_REDIRECTS",
            "ENABLE_FORWARD_USER_INFO_HEADERS",
            "FORWARD_USER_INFO_HEADER_USER_NAME",
            "FORWARD_USER_INFO_HEADER_USER_ID",
            "FORWARD_USER_INFO_HEADER_USER_EMAIL",
            "FORWARD_USER_INFO_HEADER_USER_ROLE",
            "FORWARD_USER_INFO_HEADER_AUTH_TYPE",
            "FORWARD_SESSION_INFO_HEADER_MESSAGE_ID",
            "FORWARD_SESSION_INFO_HEADER_CHAT_ID",
            "FORWARD_USER_INFO_HEADER_JWT_SECRET",
            "FORWARD_USER_INFO_HEADER_JWT",
            "FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS",
        ],
    )
    env.update(wheel.env_defaults(CONFIG, ["BYPASS_ADMIN_ACCESS_CONTROL"]))
    return env


def gen_tool_list(wheel: Wheel, defaults: dict[str, Any]) -> None:
    ns = load_tools_namespace(wheel, defaults)
    state: dict[str, Any] = {}

    async def get_tool_servers(request: Any) -> list[dict[str, Any]]:
        # Built by the real get_tool_servers_data (spec_type "json": no fetch) from the same connections.
        return await ns["get_tool_servers_data"](copy.deepcopy(state["connections"]))

    class Config:
        @staticmethod
        async def get(key: str, default: Any = None) -> Any:
            assert key == "tool_server.connections", key
            return copy.deepcopy(state["connections"])

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

    ns.update(
        get_tool_servers=get_tool_servers,
        Config=Config,
        Groups=Groups,
        Tools=Tools,
        has_connection_access=has_connection_access,
    )

    user = user_obj({"id": "user-1", "role": "user", "name": "User One", "email": "user1@example.com"})
    extra_params = {"__user__": {"id": "user-1", "role": "user"}, "__metadata__": {}}

    def conns(**filters: Any) -> list[dict[str, Any]]:
        out = []
        for sid in ["a", "b", "c"]:
            extra = {"function_name_filter_list": filters[sid]} if sid in filters else {}
            out.append(_connection(sid, **extra))
        return out

    disabled_b = conns()
    disabled_b[1]["config"]["enable"] = False
    abc = ["server:a", "server:b", "server:c"]
    inputs: list[tuple[str, list[dict[str, Any]], list[str]]] = [
        ("all three, no filter", conns(), abc),
        ("string filters: b 'getItem', c '!listItems'", conns(b="getItem", c="!listItems"), abc),
        (
            "list filters: b ['createThing'], c ['!getItem', '!listItems']",
            conns(b=["createThing"], c=["!getItem", "!listItems"]),
            abc,
        ),
        ("string filter with spaces/quotes on a", conns(a=' "getItem" , !deleteItem'), abc),
        ("list filter with quoted entries on a", conns(a=['"getItem"', " !deleteItem "]), abc),
        ("suffix match: filter 'Item' on a (endswith)", conns(a="Item"), abc),
        ("empty string filter is no filter", conns(a=""), abc),
        ("filter list null is no filter", conns(a=None), ["server:a"]),
        ("pipe selection syntax server:a|getItem,listItems", conns(), ["server:a|getItem,listItems"]),
        ("b then pipe selection: collision prefix is the id before '|'", conns(), ["server:b", "server:a|deleteItem"]),
        ("three-part form server:openapi:b", conns(), ["server:openapi:b", "server:a"]),
        ("non-openapi type server:mcp:a is skipped", conns(), ["server:mcp:a", "server:b"]),
        ("unknown server id is skipped", conns(), ["server:zzz", "server:c"]),
        ("disabled connection b is skipped", disabled_b, abc),
        ("same server three times: double collision prefixes twice", conns(), ["server:c", "server:c", "server:c"]),
        ("order c, b, a", conns(), ["server:c", "server:b", "server:a"]),
    ]
    cases = []
    for desc, connections, tool_ids in inputs:
        state["connections"] = connections
        tools = asyncio.run(ns["get_tools"](types.SimpleNamespace(), list(tool_ids), user, extra_params))
        output = [
            {"name": name, "spec": t["spec"], "tool_id": t["tool_id"], "type": t.get("type")}
            for name, t in tools.items()
        ]
        for t in tools.values():
            assert inspect.iscoroutinefunction(t["callable"])
        cases.append(
            {
                "description": desc,
                "connections": [{k: v for k, v in c.items() if k != "spec"} for c in connections],
                "tool_ids": tool_ids,
                "output": output,
            }
        )

    dump(
        "tool_list.json",
        {
            "source": wheel.source_of(TOOLS, "get_tools"),
            "generator": "tests/data/owui/generate_owui_access.py",
            "wheel_sha256": wheel.sha256,
            "specs": TOOL_SPECS,
            "note": (
                "Each connection is passed with spec_type 'json' and spec = json.dumps(specs[info.id]) (omitted "
                "from 'connections' below). get_tool_servers(request) is stubbed to return the real "
                "get_tool_servers_data(connections) (which runs the real convert_openapi_to_tool_payload and "
                "add_terminal_display_file_inline_param); get_tools then runs clean_openai_tool_schema and the "
                "real is_string_allowed / get_allow_block_lists / _strip_filter_entry from open_webui/utils/misc.py. "
                "'output' is the returned dict in insertion order: name = dict key, spec = tool_dict['spec'], "
                "tool_id and type = tool_dict values (callables omitted)."
            ),
            "stubs": {
                "get_tool_servers": "returns real get_tool_servers_data(connections)",
                "Config.get('tool_server.connections')": "the case's connections",
                "Groups.get_groups_by_member_id": "[]",
                "Tools.get_tools_by_ids": "never called (server: ids only)",
                "has_connection_access": "always True",
                "JSONCodec": "stdlib json (default ENABLE_ORJSON=True selects orjson; same result for these specs)",
                "user": {"id": "user-1", "role": "user"},
                "extra_params": extra_params,
                "ENABLE_TOOL_SERVERS": ns["ENABLE_TOOL_SERVERS"],
                "ENABLE_TOOLS": ns["ENABLE_TOOLS"],
            },
            "cases": cases,
        },
    )


##############################################################################
# calls.json
##############################################################################

CALL_SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "Calls", "version": "1.0"},
    "servers": [{"url": "http://other-host.invalid/x"}],
    "paths": {
        "/items/{item_id}": {
            "get": {
                "operationId": "getItem",
                "parameters": [
                    {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "q", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
                    {
                        "name": "tags",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                ],
                "responses": {"200": {"description": "OK"}},
            },
            "delete": {
                "operationId": "deleteItem",
                "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "Deleted"}},
            },
        },
        "/things": {
            "post": {
                "operationId": "createThing",
                "parameters": [
                    {"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean"}},
                    {"name": "mode", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "count": {"type": "integer"},
                                    "mode": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/composed": {
            "post": {
                "operationId": "composeThing",
                "parameters": [{"name": "trace", "in": "query", "required": False, "schema": {"type": "string"}}],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "allOf": [
                                    {"$ref": "#/components/schemas/Base"},
                                    {"type": "object", "properties": {"extra_prop": {"type": "integer"}}},
                                ]
                            }
                        }
                    }
                },
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/ping": {"post": {"operationId": "ping", "responses": {"200": {"description": "OK"}}}},
        "/page": {"get": {"operationId": "page", "responses": {"200": {"description": "HTML, inline"}}}},
    },
    "components": {
        "schemas": {"Base": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}}
    },
}

PAGE_HTML = "<!doctype html><html><body><h1>Hi</h1></body></html>"


class Recorder(BaseHTTPRequestHandler):
    records: list[dict[str, Any]] = []

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.records.append(
            {
                "method": self.command,
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": body.decode(),
            }
        )
        if self.path.split("?")[0].endswith("/page"):
            payload, ctype = PAGE_HTML.encode(), "text/html; charset=utf-8"
        else:
            payload, ctype = b'{"ok": true}', "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if ctype.startswith("text/html"):
            self.send_header("Content-Disposition", "inline")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def gen_calls(wheel: Wheel, defaults: dict[str, Any]) -> None:
    ns = load_tools_namespace(wheel, defaults)
    ns_mw = wheel.load(
        MIDDLEWARE,
        ["log", "BASE64_IMAGE_DATA_URI_RE", "extract_base64_images", "process_tool_result"],
        {"logging": logging, "re": re, "json": json, "Any": Any, "HTMLResponse": HTMLResponse, "JSONCodec": json},
    )
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}/base"

    # Headers exactly as get_tools' tool_function builds them for a bearer connection with an empty key.
    conn = {"auth_type": "bearer", "key": "", "config": {"enable": True}}
    headers, cookies = asyncio.run(ns["build_tool_server_headers"](conn, types.SimpleNamespace(), None))
    headers.setdefault("Content-Type", "application/json")
    server_data = {"id": "calls", "idx": 0, "url": base, "openapi": CALL_SPEC, "info": CALL_SPEC["info"], "specs": []}

    call_notes = {
        "path param needing quoting": (
            "execute_tool_server builds ?q=x+y%26z%3D1%2F%C3%A9 (urlencode/quote_plus); aiohttp's yarl requotes the "
            "query on the wire, turning %2F back into '/'. The path param is quote(str(v), safe='') and kept as is."
        ),
        "extra unknown param on a GET (no body)": "Unknown params go nowhere on a GET: no body is sent.",
        "POST JSON body props + query param + unknown param": (
            "Body keeps declared body properties plus undeclared params; declared query params not in the body "
            "schema are left out of the body."
        ),
        "POST param declared both in query and body": "Sent in both the query string and the body.",
        "POST composed (allOf) body": "Composed body schema: the body is all params, query params included.",
        "DELETE path param, no body": "DELETE is sent with json={} (body '{}'), like POST/PUT/PATCH.",
        "DELETE with extra param": "No requestBody declared: body stays {} and the unknown param is dropped.",
        "POST without requestBody, params given": "No requestBody declared: body stays {}.",
        "path param missing": "The template is left in the URL; yarl percent-encodes the braces.",
        "integer path param and bool query": "Values are str()'d by quote/urlencode: True becomes 'True'.",
        "unknown operationId": "No request; returns ({'error': ...}, None).",
    }
    inputs: list[tuple[str, str, dict[str, Any]]] = [
        ("GET path + required and optional query", "getItem", {"item_id": "42", "q": "hello", "limit": 5}),
        ("optional query param '' is skipped", "getItem", {"item_id": "1", "q": "x", "limit": ""}),
        ("required query param '' is kept", "getItem", {"item_id": "1", "q": ""}),
        ("query value None is skipped", "getItem", {"item_id": "1", "q": "x", "limit": None}),
        ("required query value None is skipped too", "getItem", {"item_id": "1", "q": None}),
        ("extra unknown param on a GET (no body)", "getItem", {"item_id": "1", "q": "x", "extra": "y"}),
        ("path param needing quoting", "getItem", {"item_id": "a b/c?", "q": "x y&z=1/é"}),
        ("list query param", "getItem", {"item_id": "1", "q": "x", "tags": ["a", "b c"]}),
        ("path param missing", "getItem", {"q": "x"}),
        ("integer path param and bool query", "getItem", {"item_id": 7, "q": True}),
        (
            "POST JSON body props + query param + unknown param",
            "createThing",
            {"name": "widget", "count": 3, "dry_run": True, "extra": "z"},
        ),
        ("POST param declared both in query and body", "createThing", {"name": "w", "mode": "fast"}),
        ("POST with no params", "createThing", {}),
        ("POST composed (allOf) body", "composeThing", {"a": 1, "b": "two", "extra_prop": 3, "trace": "t1"}),
        ("DELETE path param, no body", "deleteItem", {"item_id": "7"}),
        ("DELETE with extra param", "deleteItem", {"item_id": "7", "force": True}),
        ("POST without requestBody, params given", "ping", {"x": 1}),
        ("unknown operationId", "nope", {"x": 1}),
    ]
    cases = []
    for desc, op_id, params in inputs:
        Recorder.records.clear()
        data, resp_headers = asyncio.run(
            ns["execute_tool_server"](
                url=base,
                headers=dict(headers),
                cookies=dict(cookies),
                name=op_id,
                params=copy.deepcopy(params),
                server_data=server_data,
            )
        )
        assert len(Recorder.records) <= 1, Recorder.records
        expected = None
        if Recorder.records:
            rec = Recorder.records[0]
            full = f"http://127.0.0.1:{port}{rec['path']}"
            assert full.startswith(base), full
            expected = {
                "method": rec["method"],
                "path_and_query": "{base}" + full[len(base) :],
                "content_type": rec["content_type"],
                "raw_body": rec["body"],
                "json_body": json.loads(rec["body"]) if rec["body"] else None,
            }
        cases.append(
            {
                "description": desc,
                "operation_id": op_id,
                "params": params,
                "expected": expected,
                "result": data,
                "result_headers_is_none": resp_headers is None,
                **({"note": call_notes[desc]} if desc in call_notes else {}),
            }
        )

    # embed message: the real process_tool_result on an (html, headers) tuple for an external tool
    process = ns_mw["process_tool_result"]
    html_headers = {"Content-Type": "text/html", "Content-Disposition": "inline"}
    ret = asyncio.run(process(None, "page", (PAGE_HTML, dict(html_headers)), "external", False, {}, None))
    Recorder.records.clear()
    live = asyncio.run(
        ns["execute_tool_server"](
            url=base, headers=dict(headers), cookies={}, name="page", params={}, server_data=server_data
        )
    )
    live_ret = asyncio.run(process(None, "page", live, "external", False, {}, None))
    server.shutdown()

    mw_src = wheel.source(MIDDLEWARE)
    template_literal = "f'{tool_function_name}: Embedded UI result is active and visible to the user.'"
    assert template_literal in mw_src

    dump(
        "calls.json",
        {
            "source": wheel.source_of(TOOLS, "execute_tool_server"),
            "generator": "tests/data/owui/generate_owui_access.py",
            "wheel_sha256": wheel.sha256,
            "spec": CALL_SPEC,
            "url_argument": "{base} = http://127.0.0.1:PORT/base",
            "headers_passed": headers,
            "cookies_passed": cookies,
            "server_data": "{'id': 'calls', 'idx': 0, 'url': url_argument, 'openapi': spec, ...}",
            "note": (
                "execute_tool_server(url, headers, cookies, name=operation_id, params, server_data) against a "
                "recording server on 127.0.0.1. The spec's top-level servers[] (http://other-host.invalid/x) is "
                "ignored: the request goes to url argument + route path. headers_passed is what get_tools' "
                "tool_function sends for a bearer connection with key '' (real build_tool_server_headers, then "
                "setdefault Content-Type application/json), so GETs carry Content-Type too. expected is null when "
                "no request was made; raw_body is the body bytes as sent; result is the returned data."
            ),
            "servers_ignored": True,
            "stubs": {
                "ENABLE_TOOL_SERVERS": ns["ENABLE_TOOL_SERVERS"],
                "AIOHTTP_CLIENT_TIMEOUT_TOOL_SERVER": None,
                "AIOHTTP_CLIENT_SESSION_TOOL_SERVER_SSL": True,
                "AIOHTTP_CLIENT_ALLOW_REDIRECTS": ns["AIOHTTP_CLIENT_ALLOW_REDIRECTS"],
                "ENABLE_FORWARD_USER_INFO_HEADERS": ns["ENABLE_FORWARD_USER_INFO_HEADERS"],
            },
            "cases": cases,
            "embed_message": {
                "source": wheel.source_of(MIDDLEWARE, "process_tool_result"),
                "template": "{tool_function_name}: Embedded UI result is active and visible to the user.",
                "template_source_literal": template_literal,
                "dict": {
                    "status": "success",
                    "code": "ui_component",
                    "message": "{tool_function_name}: Embedded UI result is active and visible to the user.",
                },
                "note": (
                    "Real process_tool_result(request=None, 'page', tool_result, 'external', direct_tool=False, "
                    "metadata={}, user=None); returns (tool_result_str, tool_result_files, tool_result_embeds); the "
                    "dict is json.dumps(..., indent=2, ensure_ascii=False). 'live' feeds it the actual return of "
                    "execute_tool_server for GET /page (text/html; charset=utf-8, Content-Disposition: inline)."
                ),
                "stubs": {"HTMLResponse": "fastapi.responses.HTMLResponse (real)", "JSONCodec": "stdlib json"},
                "input": {"tool_result": [PAGE_HTML, html_headers], "tool_function_name": "page"},
                "output": list(ret),
                "output_message_dict": json.loads(ret[0]),
                "live": {"execute_tool_server_result": live[0], "output": list(live_ret)},
            },
        },
    )


##############################################################################
# tokens.json
##############################################################################


def _decode(token: str) -> dict[str, Any]:
    return {
        "header": jwt.get_unverified_header(token),
        "payload": jwt.decode(token, options={"verify_signature": False}),
    }


def _verify(token: str, secret: str) -> str:
    try:
        jwt.decode(token, secret, algorithms=["HS256"])
        return "ok"
    except jwt.PyJWTError as e:
        return type(e).__name__


def gen_tokens(wheel: Wheel, defaults: dict[str, Any]) -> None:
    ns_auth = wheel.load(
        AUTH,
        ["ALGORITHM", "create_token"],
        {"jwt": jwt, "uuid": uuid, "datetime": datetime, "timedelta": timedelta, "UTC": UTC, "SESSION_SECRET": SECRET},
    )
    create_token = ns_auth["create_token"]
    session = create_token({"id": "user-1"})
    expired = create_token({"id": "user-1"}, expires_delta=timedelta(seconds=-60))

    ns_h = load_headers_namespace(wheel, defaults)
    user_d = {"id": "user-2", "name": "Zoë Example", "email": "zoe@example.com", "role": "user"}
    user = user_obj(user_d)

    ns_h.update(
        FORWARD_USER_INFO_HEADER_JWT_SECRET=FORWARD_SECRET, FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS=FORWARD_EXPIRES
    )
    forward = ns_h["_mint_forward_user_jwt"](user)
    jwt_mode_headers = ns_h["include_user_info_headers"]({}, user)
    jwt_claims = jwt.decode(
        jwt_mode_headers[defaults["FORWARD_USER_INFO_HEADER_JWT"]], options={"verify_signature": False}
    )
    ns_h.update(
        FORWARD_USER_INFO_HEADER_JWT_SECRET=defaults["FORWARD_USER_INFO_HEADER_JWT_SECRET"],
        FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS=defaults["FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS"],
    )
    plain_headers = ns_h["include_user_info_headers"]({}, user)
    with_base = ns_h["include_user_info_headers"]({"Content-Type": "application/json"}, user)
    api_key_req = types.SimpleNamespace(state=types.SimpleNamespace(auth_type="api_key"))
    with_auth_type = ns_h["include_user_info_headers"]({}, user, request=api_key_req)

    groups = [
        types.SimpleNamespace(id="group-1", name="Engineering"),
        types.SimpleNamespace(id="group-2", name=" Zoë's Team "),
    ]
    parse = ns_h["parse_custom_headers"]
    custom_in = {"X-OpenWebUI-User-Group-Ids": "{{USER_GROUP_IDS}}", "X-Groups": "{{USER_GROUPS}}"}
    more_in = {
        "X-Name": "{{USER_NAME}}",
        "X-Email": "{{USER_EMAIL}}",
        "X-Id": "{{USER_ID}}",
        "X-Role": "{{USER_ROLE}}",
        "X-Chat": "{{CHAT_ID}}/{{MESSAGE_ID}}",
        "X-Num": 5,
        "Authorization": "Bearer {{USER_ID}}",
    }
    meta = {"chat_id": "chat-1", "message_id": "msg-1"}

    env_names = {k: v for k, v in defaults.items() if k.startswith(("FORWARD_", "ENABLE_FORWARD"))}
    dump(
        "tokens.json",
        {
            "source": f"open-webui {VERSION} {AUTH}:create_token, {HEADERS}:_mint_forward_user_jwt, "
            f"{HEADERS}:include_user_info_headers, {HEADERS}:parse_custom_headers",
            "generator": "tests/data/owui/generate_owui_access.py",
            "wheel_sha256": wheel.sha256,
            "note": (
                "Sections below, each with its own source. Tokens, iat, exp and jti change on every run; everything "
                "else is deterministic. env_defaults are open_webui/env.py's values with an empty environment."
            ),
            "env_defaults": env_names,
            "session_token": {
                "source": wheel.source_of(AUTH, "create_token"),
                "stubs": {"SESSION_SECRET": SECRET, "ALGORITHM": ns_auth["ALGORITHM"], "UTC": "pytz.UTC"},
                "SESSION_SECRET_definition": (
                    "open_webui/utils/auth.py: SESSION_SECRET = WEBUI_SECRET_KEY; env.py reads WEBUI_SECRET_KEY "
                    "(fallback WEBUI_JWT_SECRET_KEY, then ''), and the app exits at import if it is '' with auth on"
                ),
                "secret": SECRET,
                "call": "create_token({'id': 'user-1'})",
                "token": session,
                **_decode(session),
                "verify_with_secret": _verify(session, SECRET),
                "verify_with_wrong_secret": _verify(session, "wrong"),
            },
            "expired_session_token": {
                "source": wheel.source_of(AUTH, "create_token"),
                "secret": SECRET,
                "call": "create_token({'id': 'user-1'}, expires_delta=timedelta(seconds=-60))",
                "token": expired,
                **_decode(expired),
                "verify_with_secret": _verify(expired, SECRET),
            },
            "forward_user_jwt": {
                "source": wheel.source_of(HEADERS, "_mint_forward_user_jwt"),
                "stubs": {
                    "FORWARD_USER_INFO_HEADER_JWT_SECRET": FORWARD_SECRET,
                    "FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS": FORWARD_EXPIRES,
                },
                "secret": FORWARD_SECRET,
                "user": user_d,
                "token": forward,
                **_decode(forward),
                "verify_with_secret": _verify(forward, FORWARD_SECRET),
                "include_user_info_headers_with_secret": {
                    "call": "include_user_info_headers({}, user) with the secret set",
                    "header_names": sorted(jwt_mode_headers),
                    "claims_without_iat_exp": {k: v for k, v in jwt_claims.items() if k not in ("iat", "exp")},
                },
            },
            "user_info_headers": {
                "source": wheel.source_of(HEADERS, "include_user_info_headers"),
                "stubs": {"FORWARD_USER_INFO_HEADER_JWT_SECRET": defaults["FORWARD_USER_INFO_HEADER_JWT_SECRET"]},
                "user": user_d,
                "call": "include_user_info_headers({}, user)",
                "output": plain_headers,
                "with_existing_headers": {"input": {"Content-Type": "application/json"}, "output": with_base},
                "with_request_auth_type_api_key": with_auth_type,
                "chat_id_header": defaults["FORWARD_SESSION_INFO_HEADER_CHAT_ID"],
                "message_id_header": defaults["FORWARD_SESSION_INFO_HEADER_MESSAGE_ID"],
                "jwt_header": defaults["FORWARD_USER_INFO_HEADER_JWT"],
                "auth_type_header": defaults["FORWARD_USER_INFO_HEADER_AUTH_TYPE"],
                "ENABLE_FORWARD_USER_INFO_HEADERS_default": defaults["ENABLE_FORWARD_USER_INFO_HEADERS"],
                "FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS_default": defaults[
                    "FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS"
                ],
            },
            "custom_header_groups": {
                "source": wheel.source_of(HEADERS, "parse_custom_headers"),
                "user": user_d,
                "user_groups": [vars(g) for g in groups],
                "cases": [
                    {
                        "custom_headers": custom_in,
                        "metadata": {},
                        "output": parse(custom_in, user, {}, user_groups=groups),
                    },
                    {
                        "custom_headers": custom_in,
                        "metadata": {},
                        "user_groups": None,
                        "output": parse(custom_in, user, {}, user_groups=None),
                    },
                    {
                        "custom_headers": more_in,
                        "metadata": meta,
                        "output": parse(more_in, user, meta, user_groups=groups),
                    },
                ],
            },
        },
    )


def main() -> None:
    warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)
    wheel = Wheel(Path(sys.argv[1]))
    defaults = env_constants(wheel)
    gen_access(wheel)
    gen_tool_list(wheel, defaults)
    gen_calls(wheel, defaults)
    gen_tokens(wheel, defaults)


if __name__ == "__main__":
    main()
