"""Parity with Open WebUI 0.12.4, against goldens the published open-webui package produced (tests/data/owui/).

``generate_owui_access.py`` there says how each golden was made (the wheel's own functions, byte for byte, with
small named stubs). What is compared here:

1. Access (unit): ``access_control_to_grants`` (resource type "tool") against our ``from_access_control`` and
   ``ConnectionConfig``'s conversion of ``access_control``; ``has_connection_access`` (BYPASS_ADMIN_ACCESS_CONTROL
   at its default, True) against our ``has_access``; ``migrate_access_control`` against ``ConnectionConfig``.
2. Tool list (HTTP): ``get_tools`` against ``GET /api/v1/tools/specs?tool_ids=...``: names in order, and per
   function the spec's name, description, property names, property types and required list.
3. Calls (HTTP): ``execute_tool_server`` against ``POST /api/v1/tool_servers/{id}/call/{op}``, both sending to a
   recording server on loopback: method, raw path and query, Content-Type and JSON body.
4. The embed message of an inline HTML answer (``process_tool_result``) against our ToolResult.
5. Tokens (unit): the session token, its expired twin, the forward JWT and the plain user-info headers OWUI
   makes, read by our ``IdentityResolver``.

Deliberate deviations, each encoded below where it applies (everything else must match exactly):

- ``access_control: null`` on a connection: ``migrate_access_control`` makes it ``[]`` (admins only); we convert
  it as ``access_control_to_grants`` does (public read), our documented choice.
- ``access_control`` that is neither null nor a dict: OWUI migrates it to ``[]``; we refuse the connection.
- An ``access_grants`` entry that is not a dict: OWUI's has_access skips it; we refuse the connection.
- No Content-Type on a request without a body (OWUI sends ``application/json`` even on a GET).
- Query booleans: OWUI ``str()``s them (``True``), we send ``true``.
- Query quoting: aiohttp/yarl turns OWUI's ``%2F`` back into ``/`` on the wire; httpx sends ``%2F``. Compared
  after ``parse_qsl``, and the raw strings may differ only in that.
- Arguments the operation does not declare are dropped, not put in the body.
- A composed (``allOf``) JSON body carries only its (merged) schema properties; OWUI, finding no top-level
  properties, puts every argument in the body, query parameters included.
- A missing path parameter or required body property is refused with 422 naming it; OWUI sends the request
  anyway (``%7Bitem_id%7D`` left in the path, or a body without the property).
- An unknown operation id is a 404; OWUI returns ``{"error": ...}``. Neither sends a request.

``config: null``, ``config.access_grants: null`` and ``config.function_name_filter_list: null`` are read as
absent, as OWUI reads them (this file found them refused at first).

The goldens are dumped with ``sort_keys=True``, which loses the spec's path/method order that decides OWUI's tool
names; the tool-list specs are put back in document order as the generator's TOOL_SPECS literal has them.
"""

from __future__ import annotations

import ast
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError
from starlette.datastructures import Headers

from executor.access import identity
from executor.access.grants import AccessGrant, from_access_control, has_access
from executor.access.identity import IdentityResolver
from executor.access.keys import KnownKey
from executor.access.principal import EndUser, Principal
from executor.app import create_app
from executor.errors import Unauthenticated
from executor.openapi.models import Connection, ConnectionConfig
from executor.settings import Settings
from tests.toolserver_helpers import serve

DATA = Path(__file__).parent / "data" / "owui"


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


ACCESS = _golden("access.json")
TOOL_LIST = _golden("tool_list.json")
CALLS = _golden("calls.json")
TOKENS = _golden("tokens.json")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _grant_tuples(grants: list[AccessGrant] | list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for g in grants:
        d = g.model_dump() if isinstance(g, AccessGrant) else g
        out.append((d["principal_type"], d["principal_id"], d["permission"]))
    return out


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path, cache_dir: Path, connections: list[dict[str, Any]]
) -> AsyncIterator[httpx.AsyncClient]:
    """Our service on loopback with these connections; no keys, so the one caller is the anonymous admin."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        cache_dir=cache_dir,
        pool_size=0,
        egress_allowlist=["127.0.0.1"],
        tool_server_connections=connections,
    )
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base, timeout=20) as client:
        yield client


class Services:
    """Services started on demand, one per distinct connection list, kept for the module (a start is ~0.3 s)."""

    def __init__(self, root: Path, cache_dir: Path, stack: contextlib.AsyncExitStack) -> None:
        self.root = root
        self.cache_dir = cache_dir
        self.stack = stack
        self.clients: dict[str, httpx.AsyncClient] = {}

    async def client(self, connections: list[dict[str, Any]]) -> httpx.AsyncClient:
        key = json.dumps(connections, sort_keys=True)
        if key not in self.clients:
            data_dir = self.root / f"service-{len(self.clients)}"
            data_dir.mkdir()
            service = running_service(data_dir, self.cache_dir, connections)
            self.clients[key] = await self.stack.enter_async_context(service)
        return self.clients[key]


# The HTTP tests share module-scoped servers, so they run in the module's event loop.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> AsyncIterator[Services]:
    async with contextlib.AsyncExitStack() as stack:
        yield Services(tmp_path_factory.mktemp("owui-parity"), cache_dir, stack)


##############################################################################
# 1. Access
##############################################################################

TOOL_GRANT_CASES = [c for c in ACCESS["access_control_to_grants"]["cases"] if c["resource_type"] == "tool"]
HCA = ACCESS["has_connection_access"]
HCA_DEFAULT_CASES = [
    c for c in HCA["cases"] if c["BYPASS_ADMIN_ACCESS_CONTROL"] == HCA["BYPASS_ADMIN_ACCESS_CONTROL_default"]
]
MIGRATE_CASES = {c["description"]: c for c in ACCESS["migrate_access_control"]["cases"]}


def test_golden_shapes() -> None:
    """The goldens hold what the tests below rely on (a regenerated golden cannot silently drop cases)."""
    assert len(TOOL_GRANT_CASES) == 3
    assert HCA["BYPASS_ADMIN_ACCESS_CONTROL_default"] is True
    assert len(HCA_DEFAULT_CASES) == 15
    assert len(TOOL_LIST["cases"]) == 16
    assert len(CALLS["cases"]) == 18
    assert CALLS["servers_ignored"] is True


@pytest.mark.parametrize("case", TOOL_GRANT_CASES, ids=lambda c: f"access_control={json.dumps(c['access_control'])}")
def test_access_control_to_grants(case: dict[str, Any]) -> None:
    expected = _grant_tuples(case["output"])
    assert _grant_tuples(from_access_control(case["access_control"])) == expected
    # The connection config converts the legacy dict the same way (None: public read, our documented choice).
    config = ConnectionConfig.model_validate({"access_control": case["access_control"]})
    assert _grant_tuples(config.access_grants) == expected


def _principal(user: dict[str, Any], group_ids: list[str]) -> Principal:
    role = "admin" if user["role"] == "admin" else "user"
    return Principal(
        key_id=f"key-{role}",
        key_name=f"owui-{role}",
        role=role,
        forward_identity=True,
        end_user=EndUser(id=user["id"], role=user["role"]),
        group_ids=frozenset(group_ids),
    )


def _owui_grants(config: dict[str, Any] | None) -> list[AccessGrant]:
    """``has_access`` reads ``config.access_grants`` and skips entries that are not dicts."""
    raw = (config or {}).get("access_grants") or []
    return [AccessGrant.model_validate(g) for g in raw if isinstance(g, dict)]


@pytest.mark.parametrize("case", HCA_DEFAULT_CASES, ids=lambda c: c["description"])
def test_has_connection_access(case: dict[str, Any]) -> None:
    principal = _principal(case["user"], case["user_group_ids"])
    assert has_access(principal, _owui_grants(case["connection_config"]), "read") is case["expected"]


# Known bugs (case description -> reason), each an xfail(strict=True); none left: null is read as "absent".
CONNECTION_NULL_BUGS: dict[str, str] = {}
# Deviation: an access_grants entry that is not an object refuses the connection; OWUI skips the entry.
NON_DICT_GRANT = "non-dict grant entries are skipped"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c["description"],
            marks=[
                pytest.mark.xfail(strict=True, raises=ValidationError, reason=CONNECTION_NULL_BUGS[c["description"]])
            ]
            if c["description"] in CONNECTION_NULL_BUGS
            else [],
        )
        for c in HCA_DEFAULT_CASES
        if c["description"] != NON_DICT_GRANT
    ],
)
def test_has_connection_access_through_connection_model(case: dict[str, Any]) -> None:
    """The same cases, with the whole golden connection parsed by our Connection model."""
    conn = Connection.model_validate(case["connection"])
    principal = _principal(case["user"], case["user_group_ids"])
    assert has_access(principal, conn.config.access_grants, "read") is case["expected"]


def test_non_dict_grant_entry_deviation() -> None:
    """Deviation: OWUI's has_access skips access_grants entries that are not dicts; we refuse the connection."""
    (case,) = [c for c in HCA_DEFAULT_CASES if c["description"] == NON_DICT_GRANT]
    assert case["connection_config"]["access_grants"][0] == "user:*" and case["expected"] is True
    with pytest.raises(ValidationError, match=r"access_grants\.0"):
        Connection.model_validate(case["connection"])


@pytest.mark.parametrize(
    "case",
    [c for c in MIGRATE_CASES.values() if c["description"] not in ("access_control null", "access_control not a dict")],
    ids=lambda c: c["description"],
)
def test_migrate_access_control(case: dict[str, Any]) -> None:
    config = ConnectionConfig.model_validate(case["input"])
    assert _grant_tuples(config.access_grants) == _grant_tuples(case["output"].get("access_grants", []))
    for key, value in case["output"].items():
        if key != "access_grants":
            assert getattr(config, key) == value, key


def test_migrate_access_control_null_deviation() -> None:
    """Deviation: OWUI's migrate_access_control turns a connection's ``access_control: null`` into ``[]``
    (admins only); we convert it as access_control_to_grants does (public read), our documented choice."""
    case = MIGRATE_CASES["access_control null"]
    assert case["output"] == {"access_grants": []}
    config = ConnectionConfig.model_validate(case["input"])
    assert _grant_tuples(config.access_grants) == [("user", "*", "read")]


def test_migrate_access_control_not_a_dict_deviation() -> None:
    """Deviation: OWUI migrates a non-dict ``access_control`` to ``[]``; we refuse it (grants.migrate)."""
    case = MIGRATE_CASES["access_control not a dict"]
    assert case["output"] == {"access_grants": []}
    with pytest.raises(ValidationError, match="access_control must be null or an object"):
        ConnectionConfig.model_validate(case["input"])


##############################################################################
# 2. Tool list
##############################################################################

TOOL_LIST_BUGS: dict[str, str] = {}


def _document_order() -> dict[str, list[tuple[str, str]]]:
    """Each server's (path, method) order in the generator's TOOL_SPECS literal.

    The goldens are dumped with ``sort_keys=True``, so tool_list.json's "specs" lists paths and methods
    alphabetically, while get_tools ran on the dicts in their written order (document order decides the names).
    The order is read back from the generator's source (never executed); the content comes from the golden.
    """
    tree = ast.parse((DATA / "generate_owui_access.py").read_text())
    (literal,) = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TOOL_SPECS" for t in n.targets)
    ]
    assert isinstance(literal, ast.Dict)

    def entries(node: ast.expr) -> list[tuple[str, ast.expr]]:
        assert isinstance(node, ast.Dict)
        keys = [ast.literal_eval(k) if k is not None else None for k in node.keys]
        assert all(isinstance(k, str) for k in keys), keys
        return [(str(k), v) for k, v in zip(keys, node.values, strict=True)]

    order: dict[str, list[tuple[str, str]]] = {}
    for server, spec in entries(literal):
        (paths,) = [v for k, v in entries(spec) if k == "paths"]
        order[server] = [(path, method) for path, item in entries(paths) for method, _ in entries(item)]
    return order


def _in_document_order(server: str) -> dict[str, Any]:
    spec: dict[str, Any] = TOOL_LIST["specs"][server]
    order = TOOL_SPEC_ORDER[server]
    assert sorted(order) == sorted((p, m) for p, item in spec["paths"].items() for m in item)
    paths: dict[str, dict[str, Any]] = {}
    for path, method in order:
        paths.setdefault(path, {})[method] = spec["paths"][path][method]
    return {**spec, "paths": paths}


TOOL_SPEC_ORDER = _document_order()


def _tool_list_connections(case: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in case["connections"]:
        conn = {**c, "spec_type": "json", "spec": json.dumps(_in_document_order(c["info"]["id"]))}
        # Admins see every connection anyway; a public read grant makes that independent of the role.
        conn["config"] = {"access_grants": [{"principal_type": "user", "principal_id": "*"}], **c["config"]}
        out.append(conn)
    return out


def _spec_fields(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["parameters"]
    return {
        "name": spec["name"],
        "description": spec["description"],
        "properties": sorted(params["properties"]),
        "types": {k: v.get("type") for k, v in params["properties"].items()},
        "required": params.get("required"),
    }


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c["description"],
            marks=[pytest.mark.xfail(strict=True, reason=TOOL_LIST_BUGS[c["description"]])]
            if c["description"] in TOOL_LIST_BUGS
            else [],
        )
        for c in TOOL_LIST["cases"]
    ],
)
@module_loop
async def test_tool_list(case: dict[str, Any], services: Services) -> None:
    client = await services.client(_tool_list_connections(case))
    resp = await client.get("/api/v1/tools/specs", params=[("tool_ids", t) for t in case["tool_ids"]])
    assert resp.status_code == 200, resp.text
    ours = resp.json()
    assert [f["name"] for f in ours] == [o["name"] for o in case["output"]]
    for mine, theirs in zip(ours, case["output"], strict=True):
        assert mine["name"] == mine["spec"]["name"]
        assert _spec_fields(mine["spec"]) == _spec_fields(theirs["spec"]), theirs["name"]
        # OWUI's tool_id names the server before any '|' or type; ours carries the server id itself.
        assert f"server:{mine['server_id']}" == theirs["tool_id"].replace(":openapi:", ":").split("|")[0]


##############################################################################
# 3. Calls, 4. embed message
##############################################################################

BASE_PATH = urlsplit(CALLS["url_argument"].split(" = ", 1)[1]).path  # "/base"
PAGE_HTML: str = CALLS["embed_message"]["input"]["tool_result"][0]


class Recorder:
    """A tool server that records every request exactly as received and answers JSON (an HTML page at /page)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        self.records.append(
            {
                "method": scope["method"],
                "path_and_query": raw_path.decode("ascii") + ("?" + query.decode("ascii") if query else ""),
                "content_type": headers.get("content-type"),
                "body": body,
            }
        )
        if raw_path == f"{BASE_PATH}/page".encode():
            payload = PAGE_HTML.encode()
            answer = [(b"content-type", b"text/html; charset=utf-8"), (b"content-disposition", b"inline")]
        else:
            payload = b'{"ok": true}'
            answer = [(b"content-type", b"application/json")]
        answer.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": payload})


@dataclass(frozen=True)
class Deviation:
    """How our request deliberately differs from OWUI's in one case, and why (one line)."""

    reason: str
    refused: tuple[int, str, str | None] | None = None  # (HTTP status, error code, field): we send nothing
    body_dropped: tuple[str, ...] = ()  # keys OWUI puts in the JSON body that we do not send
    query_bools: tuple[str, ...] = ()  # query parameters OWUI sends as str(bool) ("True"), we as "true"
    query_requoted: bool = False  # yarl requoted OWUI's query on the wire ('%2F' -> '/')


NO_BODY_NO_CONTENT_TYPE = "we send no Content-Type on a request without a body; OWUI sends application/json always"
BOOL_Q = "booleans in a query: OWUI str()s them ('True'), we send 'true'"
REQUOTED = "aiohttp/yarl requotes OWUI's query on the wire ('%2F' -> '/'); we send urlencode's '%2F' (same values)"
UNDECLARED = "arguments the operation does not declare are dropped; OWUI puts them in the body"

CALL_DEVIATIONS: dict[str, tuple[Deviation, ...]] = {
    "path param needing quoting": (Deviation(REQUOTED, query_requoted=True),),
    "path param missing": (
        Deviation(
            "a missing path parameter is a 422 naming it; OWUI sends '%7Bitem_id%7D' in the path",
            refused=(422, "missing_argument", "item_id"),
        ),
    ),
    "integer path param and bool query": (Deviation(BOOL_Q, query_bools=("q",)),),
    "POST JSON body props + query param + unknown param": (
        Deviation(BOOL_Q, query_bools=("dry_run",)),
        Deviation(UNDECLARED, body_dropped=("extra",)),
    ),
    "POST with no params": (
        Deviation(
            "a missing required body property is a 422 naming it; OWUI sends the body without it",
            refused=(422, "missing_argument", "name"),
        ),
    ),
    "POST composed (allOf) body": (
        Deviation(
            "an allOf body carries its merged schema properties only; OWUI sends every argument (query 'trace' too)",
            body_dropped=("trace",),
        ),
    ),
    "unknown operationId": (
        Deviation(
            "an unknown operation is a 404; OWUI returns {'error': ...} (neither sends a request)",
            refused=(404, "operation_not_found", None),
        ),
    ),
}


def _calls_connection(base: str) -> dict[str, Any]:
    return {
        "type": "openapi",
        "url": base + BASE_PATH,
        "spec_type": "json",
        "spec": json.dumps(CALLS["spec"]),
        "auth_type": "none",
        "config": {"access_grants": [{"principal_type": "user", "principal_id": "*"}]},
        "info": {"id": "calls"},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def recorder_server() -> AsyncIterator[tuple[str, Recorder]]:
    app = Recorder()
    async with serve(app) as base:
        yield base, app


@pytest.fixture
def recorder(recorder_server: tuple[str, Recorder]) -> tuple[str, Recorder]:
    """The module's recorder, its records cleared for this test."""
    recorder_server[1].records.clear()
    return recorder_server


@pytest_asyncio.fixture(loop_scope="module")
async def calls_client(services: Services, recorder: tuple[str, Recorder]) -> httpx.AsyncClient:
    return await services.client([_calls_connection(recorder[0])])


def test_call_deviations_name_real_cases() -> None:
    described = {c["description"] for c in CALLS["cases"]}
    assert set(CALL_DEVIATIONS) <= described
    for desc, devs in CALL_DEVIATIONS.items():
        assert all(d.reason for d in devs), desc


def _split(path_and_query: str) -> tuple[str, str]:
    path, _, query = path_and_query.partition("?")
    return path, query


def _expected_query(query: str, devs: tuple[Deviation, ...]) -> list[tuple[str, str]]:
    bools = {name for d in devs for name in d.query_bools}
    pairs = parse_qsl(query, keep_blank_values=True)
    return [(k, v.lower() if k in bools and v in ("True", "False") else v) for k, v in pairs]


async def _call(client: httpx.AsyncClient, op: str, args: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/api/v1/tool_servers/calls/call/{op}", json={"arguments": args})


@pytest.mark.parametrize("case", CALLS["cases"], ids=lambda c: c["description"])
@module_loop
async def test_call(case: dict[str, Any], calls_client: httpx.AsyncClient, recorder: tuple[str, Recorder]) -> None:
    _, rec = recorder
    devs = CALL_DEVIATIONS.get(case["description"], ())
    resp = await _call(calls_client, case["operation_id"], case["params"])
    refused = next((d.refused for d in devs if d.refused), None)
    if refused is not None:
        status, code, field = refused
        assert resp.status_code == status, resp.text
        assert resp.json()["error"] == code and resp.json()["field"] == field, resp.text
        assert rec.records == []
        return
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["status"] == "ok" and result["result"] == case["result"] == {"ok": True}, result
    # servers_ignored: the spec's servers[] URL gets nothing; the request went to the connection URL + path.
    (got,) = rec.records
    expected = case["expected"]
    assert got["method"] == expected["method"]

    exp_path, exp_query = _split(expected["path_and_query"].replace("{base}", BASE_PATH))
    got_path, got_query = _split(got["path_and_query"])
    assert got_path == exp_path
    if any(d.query_requoted for d in devs):
        assert got_query != exp_query and got_query.replace("%2F", "/") == exp_query
    bools = {name for d in devs for name in d.query_bools}
    golden_pairs = dict(parse_qsl(exp_query, keep_blank_values=True))
    assert all(golden_pairs.get(name) in ("True", "False") for name in bools), "stale deviation"
    if bools or any(d.query_requoted for d in devs):
        assert parse_qsl(got_query, keep_blank_values=True) == _expected_query(exp_query, devs)
    else:
        assert got_query == exp_query

    dropped = {k for d in devs for k in d.body_dropped}
    exp_body = expected["json_body"]
    if exp_body is not None:
        assert dropped <= set(exp_body), "a listed deviation no longer shows in the golden"
        exp_body = {k: v for k, v in exp_body.items() if k not in dropped}
    got_body = json.loads(got["body"]) if got["body"] else None
    assert got_body == exp_body
    if exp_body is None:
        assert expected["content_type"] == "application/json"  # NO_BODY_NO_CONTENT_TYPE
        assert got["content_type"] is None, NO_BODY_NO_CONTENT_TYPE
    else:
        assert got["content_type"] == expected["content_type"]


@module_loop
async def test_call_servers_ignored(calls_client: httpx.AsyncClient, recorder: tuple[str, Recorder]) -> None:
    """Every request of every case lands on the recorder, at the connection's base path, never on servers[]."""
    _, rec = recorder
    sent = 0
    for case in CALLS["cases"]:
        resp = await _call(calls_client, case["operation_id"], case["params"])
        refused = next((d.refused for d in CALL_DEVIATIONS.get(case["description"], ()) if d.refused), None)
        assert resp.status_code == (refused[0] if refused else 200), resp.text
        if refused is None:
            sent += 1
            assert resp.json()["status"] == "ok", resp.text
    assert CALLS["spec"]["servers"] == [{"url": "http://other-host.invalid/x"}]
    assert sent == len(CALLS["cases"]) - 3  # path param missing, POST with no params, unknown operationId
    assert len(rec.records) == sent
    assert all(r["path_and_query"].startswith(BASE_PATH + "/") for r in rec.records)


@module_loop
async def test_embed_message(calls_client: httpx.AsyncClient, recorder: tuple[str, Recorder]) -> None:
    golden = CALLS["embed_message"]
    assert golden["input"]["tool_function_name"] == "page"
    assert golden["live"]["execute_tool_server_result"] == PAGE_HTML
    resp = await _call(calls_client, "page", {})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["status"] == "ok"
    assert result["result"] == golden["output_message_dict"]
    assert json.loads(golden["live"]["output"][0]) == golden["output_message_dict"]
    (out,) = result["outputs"]
    assert out["type"] == "html" and out["data"] == PAGE_HTML == golden["live"]["output"][2][0]
    assert out["mime_type"].startswith("text/html")


##############################################################################
# 5. Tokens
##############################################################################

KEY = KnownKey("key-owui", "owui", "user", True)
# The goldens' secrets are short test strings; PyJWT warns about their length on every decode.
short_secrets = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def _resolver(tmp_path: Path, *, secrets: bool) -> IdentityResolver:
    extra: dict[str, Any] = {}
    if secrets:
        extra = {
            "openwebui_secret_key": TOKENS["session_token"]["secret"],
            "openwebui_forward_jwt_secret": TOKENS["forward_user_jwt"]["secret"],
        }
    settings = Settings(_env_file=None, data_dir=tmp_path, **extra)  # type: ignore[call-arg]
    return IdentityResolver(settings)


def test_token_goldens_secrets() -> None:
    assert TOKENS["session_token"]["secret"] == "owui-test-secret"
    assert TOKENS["forward_user_jwt"]["secret"] == "owui-forward-secret"
    assert TOKENS["session_token"]["verify_with_secret"] == "ok"
    assert TOKENS["expired_session_token"]["verify_with_secret"] == "ExpiredSignatureError"


def test_header_names() -> None:
    env = TOKENS["env_defaults"]
    ours = {
        "FORWARD_USER_INFO_HEADER_USER_ID": identity.USER_ID,
        "FORWARD_USER_INFO_HEADER_USER_NAME": identity.USER_NAME,
        "FORWARD_USER_INFO_HEADER_USER_EMAIL": identity.USER_EMAIL,
        "FORWARD_USER_INFO_HEADER_USER_ROLE": identity.USER_ROLE,
        "FORWARD_USER_INFO_HEADER_JWT": identity.USER_JWT,
        "FORWARD_SESSION_INFO_HEADER_CHAT_ID": identity.CHAT_ID,
        "FORWARD_SESSION_INFO_HEADER_MESSAGE_ID": identity.MESSAGE_ID,
    }
    for name, header in ours.items():
        assert env[name].lower() == header, name
    forwarded = TOKENS["forward_user_jwt"]["include_user_info_headers_with_secret"]["header_names"]
    assert [h.lower() for h in forwarded] == [identity.USER_JWT]


@short_secrets
def test_session_token(tmp_path: Path) -> None:
    named = _resolver(tmp_path, secrets=True).resolve(KEY, Headers({}), TOKENS["session_token"]["token"])
    assert named.user == EndUser(id="user-1", verified=True)
    assert named.group_ids == frozenset()


@short_secrets
def test_session_token_expired(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated) as exc:
        _resolver(tmp_path, secrets=True).resolve(KEY, Headers({}), TOKENS["expired_session_token"]["token"])
    assert exc.value.code == "invalid_token"


@short_secrets
def test_session_token_wrong_secret(tmp_path: Path) -> None:
    assert TOKENS["session_token"]["verify_with_wrong_secret"] == "InvalidSignatureError"
    settings = Settings(_env_file=None, data_dir=tmp_path, openwebui_secret_key="wrong")  # type: ignore[call-arg]
    with pytest.raises(Unauthenticated) as exc:
        IdentityResolver(settings).resolve(KEY, Headers({}), TOKENS["session_token"]["token"])
    assert exc.value.code == "invalid_token"


@short_secrets
def test_forward_user_jwt(tmp_path: Path) -> None:
    golden = TOKENS["forward_user_jwt"]
    headers = Headers({identity.USER_JWT: golden["token"]})
    named = _resolver(tmp_path, secrets=True).resolve(KEY, headers, None)
    user = golden["user"]
    assert user == {"id": "user-2", "name": "Zoë Example", "email": "zoe@example.com", "role": "user"}
    assert named.user == EndUser(
        id=user["id"], name=user["name"], email=user["email"], role=user["role"], verified=True
    )


def _plain_headers(extra: dict[str, str] | None = None) -> Headers:
    out = {k.lower(): v for k, v in TOKENS["user_info_headers"]["output"].items()}
    return Headers({**out, **{k.lower(): v for k, v in (extra or {}).items()}})


def test_plain_user_info_headers(tmp_path: Path) -> None:
    golden = TOKENS["user_info_headers"]
    assert golden["output"]["X-OpenWebUI-User-Name"] == "Zo%C3%AB Example"
    named = _resolver(tmp_path, secrets=False).resolve(KEY, _plain_headers(), None)
    user = golden["user"]
    assert named.user == EndUser(id=user["id"], name=user["name"], email=user["email"], role=user["role"])
    assert named.user is not None and named.user.name == "Zoë Example" and not named.user.verified


def test_custom_header_group_ids(tmp_path: Path) -> None:
    cases = TOKENS["custom_header_groups"]["cases"]
    golden_ids = {g["id"] for g in TOKENS["custom_header_groups"]["user_groups"]}
    with_groups, without_groups = cases[0]["output"], cases[1]["output"]
    resolver = _resolver(tmp_path, secrets=False)
    named = resolver.resolve(KEY, _plain_headers(with_groups), None)
    assert named.group_ids == frozenset(golden_ids) == {"group-1", "group-2"}
    assert named.user is not None and named.user.id == "user-2"
    # No groups known (user_groups None): OWUI sends an empty value, which names no group here.
    assert resolver.resolve(KEY, _plain_headers(without_groups), None).group_ids == frozenset()
