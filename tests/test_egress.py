"""Network access from sandboxes, end to end: real kernels (local jail and Docker) reach loopback HTTP and HTTPS
servers only through the service's egress proxy, under the policy an admin set.

The targets listen on 127.0.0.2 (a loopback address of the host that the sandboxes' NO_PROXY does not list: a
sandbox's own 127.0.0.1 is its own loopback) and are allow-listed by address and port. A name that resolves to a
private address needs a resolver that says so: that case is in tests/test_egress_policy.py, with a fake resolver.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from executor.settings import Settings
from tests.conftest import BACKENDS, KEY_A, Service, run

ADMIN = "admin-key-egress"
HOST = "127.0.0.2"
BIG = 6 << 20


@dataclass
class Targets:
    http: int
    https: int
    closed: int  # a loopback port nobody allow-listed (and nothing listens on)
    ca_pem: str
    wheels: Path


class _Handler(http.server.BaseHTTPRequestHandler):
    wheels: Path
    closed: int

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, b"hello from the target")
        elif self.path == "/big":
            self._send(200, b"x" * BIG, "application/octet-stream")
        elif self.path == "/redirect":
            self._send(302, b"", extra={"Location": f"http://{HOST}:{self.closed}/elsewhere"})
        elif self.path.rstrip("/") == "/simple/exegress-pkg":
            links = "".join(f'<a href="/files/{w.name}">{w.name}</a>' for w in self.wheels.glob("*.whl"))
            self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
        elif self.path.startswith("/files/"):
            self._send(200, (self.wheels / self.path.rsplit("/", 1)[1]).read_bytes(), "application/octet-stream")
        else:
            self._send(404, b"not here")


def _serve(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    from tests.test_tool_requirements import make_wheel

    wheels = tmp_path_factory.mktemp("egress-wheels")
    make_wheel(wheels, "exegress-pkg", "1.0", {"exegress_pkg/__init__.py": "VALUE = 'installed through the proxy'\n"})
    with http.server.ThreadingHTTPServer((HOST, 0), _Handler) as probe:
        closed = probe.server_address[1]  # bound, then closed: nothing listens there
    handler = type("Handler", (_Handler,), {"wheels": wheels, "closed": closed})
    plain = http.server.ThreadingHTTPServer((HOST, 0), handler)
    secure = http.server.ThreadingHTTPServer((HOST, 0), handler)
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(ctx)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    threads = [_serve(plain), _serve(secure)]
    try:
        yield Targets(plain.server_address[1], secure.server_address[1], closed, ca.cert_pem.bytes().decode(), wheels)
    finally:
        for s in (plain, secure):
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(5)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(settings: Settings, targets: Targets) -> Settings:
    settings.admin_api_keys = [ADMIN]
    settings.egress_default = "allowlist"
    settings.egress_client_max = "allowlist"
    settings.egress_sandbox_allowlist = [f"{HOST}:{targets.http}", f"{HOST}:{targets.https}"]
    return settings


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with service.client() as c:
        yield c


async def new_session(c: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await c.post("/api/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def fetch_code(url: str, ca_pem: str | None = None) -> str:
    """A cell that fetches ``url`` with urllib (which reads HTTP(S)_PROXY) and returns what happened as JSON."""
    ctx = "None"
    if ca_pem is not None:
        ctx = f"ssl.create_default_context(cadata={ca_pem!r})"
    return (
        "import json, ssl, urllib.request, urllib.error\n"
        "try:\n"
        f"    with urllib.request.urlopen({url!r}, timeout=20, context={ctx}) as r:\n"
        "        body = r.read()\n"
        "        out = {'status': r.status, 'len': len(body), 'head': body[:40].decode(errors='replace')}\n"
        "except urllib.error.HTTPError as e:\n"
        "    out = {'status': e.code, 'body': e.read().decode(errors='replace')}\n"
        "except Exception as e:\n"
        "    out = {'error': type(e).__name__, 'text': str(e)[:300]}\n"
        "print(json.dumps(out))\n"
    )


def printed(result: dict[str, Any]) -> dict[str, Any]:
    assert result["status"] == "ok", result
    out: dict[str, Any] = json.loads(result["stdout"].strip().splitlines()[-1])
    return out


async def test_a_cell_reaches_allowed_servers_and_nothing_else(
    client: httpx.AsyncClient, service: Service, targets: Targets
) -> None:
    s = await new_session(client)
    assert s["egress"]["mode"] == "allowlist" and s["egress"]["proxy"] is True, s
    sid = s["id"]

    ok = printed(await run(client, sid, fetch_code(f"http://{HOST}:{targets.http}/hello")))
    assert ok == {"status": 200, "len": 21, "head": "hello from the target"}, ok
    tls = printed(await run(client, sid, fetch_code(f"https://{HOST}:{targets.https}/hello", targets.ca_pem)))
    assert tls["status"] == 200 and tls["head"] == "hello from the target", tls

    # Not listed (plain HTTP: the proxy's 403 is the answer; HTTPS: CONNECT is refused, urllib raises).
    refused = printed(await run(client, sid, fetch_code(f"http://{HOST}:{targets.closed}/")))
    assert refused["status"] == 403 and json.loads(refused["body"])["rule"] == "not-listed", refused
    meta = printed(await run(client, sid, fetch_code("http://169.254.169.254/latest/meta-data/")))
    assert meta["status"] == 403, meta
    secure_refused = printed(await run(client, sid, fetch_code(f"https://{HOST}:{targets.closed}/", targets.ca_pem)))
    assert "403" in secure_refused.get("text", ""), secure_refused
    # A redirect from an allowed server to a refused one: the second hop is judged on its own.
    hop = printed(await run(client, sid, fetch_code(f"http://{HOST}:{targets.http}/redirect")))
    assert hop["status"] == 403 and json.loads(hop["body"])["rule"] == "not-listed", hop

    # Raw sockets: only loopback exists in the sandbox; the relay is the one way out.
    raw = await run(
        client,
        sid,
        "import os, socket\n"
        "def attempt(addr):\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=3).close(); return 'connected'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        f"print(attempt(('10.0.0.1', 80)), attempt(({HOST!r}, {targets.http})), attempt(('1.1.1.1', 53)),"
        " attempt(('127.0.0.1', int(os.environ['EXECUTOR_EGRESS_PORT']))))\n",
    )
    words = raw["stdout"].split()
    assert words[:3] != ["connected"] * 3 and "connected" not in words[:3], raw
    assert words[3] == "connected", raw

    # Every decision is in the audit log: host, port, decision, rule, bytes; never headers or bodies.
    await service.app.state.audit.flush()  # type: ignore[attr-defined]
    r = await client.get("/api/v1/audit", params={"kind": "egress"}, headers=admin())
    assert r.status_code == 200, r.text
    allowed = [e for e in r.json() if e["action"] == "egress"]
    assert any(e["detail"]["port"] == targets.http and e["detail"]["bytes_in"] > 0 for e in allowed), allowed
    r = await client.get("/api/v1/audit", params={"kind": "refused"}, headers=admin())
    refusals = [e["detail"] for e in r.json() if e["action"] == "egress"]
    assert {"not-listed"} <= {d["rule"] for d in refusals}, refusals
    assert all(d["decision"] == "refused" and "hello" not in json.dumps(d) for d in refusals)

    socket_path = service.app.state.sessions.get(None, sid).sandbox.egress_socket  # type: ignore[attr-defined]
    assert os.path.exists(socket_path)  # noqa: ASYNC240
    assert (await client.delete(f"/api/v1/sessions/{sid}")).status_code == 204
    assert not os.path.exists(socket_path), "the proxy socket outlived its session"  # noqa: ASYNC240
    ready = (await client.get("/readyz")).json()
    assert ready["egress"]["proxies"] == 0 and ready["egress"]["session_default"] == "allowlist", ready


async def test_pip_installs_from_an_allow_listed_index(client: httpx.AsyncClient, targets: Targets) -> None:
    sid = (await new_session(client))["id"]
    res = await run(
        client,
        sid,
        "import subprocess, sys, importlib\n"
        "p = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--index-url',"
        f" 'http://{HOST}:{targets.http}/simple/', 'exegress-pkg'], capture_output=True, text=True)\n"
        "print(p.returncode, p.stderr[-500:])\n"
        "importlib.invalidate_caches()\n"
        "import exegress_pkg\n"
        "print(exegress_pkg.VALUE)\n"
        # Compiled extensions must load from there: the target allows exec (Docker: its own tmpfs).
        "import os, shutil\n"
        "shutil.copy('/bin/true', os.environ['PIP_TARGET'] + '/t'); os.chmod(os.environ['PIP_TARGET'] + '/t', 0o755)\n"
        "print('exec', subprocess.run([os.environ['PIP_TARGET'] + '/t']).returncode)\n",
        timeout_s=120,
    )
    assert res["status"] == "ok", res
    assert res["stdout"].startswith("0 ") and "installed through the proxy" in res["stdout"], res
    assert "exec 0" in res["stdout"], res
    await client.delete(f"/api/v1/sessions/{sid}")


@pytest.mark.parametrize("backend_name", ["local"])
async def test_the_byte_cap_cuts_a_large_download(settings: Settings, targets: Targets) -> None:
    from tests.conftest import start_service, stop_service

    settings.egress_max_mb_in = 1
    server, task, svc = await start_service(settings)
    try:
        async with svc.client() as c:
            sid = (await new_session(c))["id"]
            out = printed(await run(c, sid, fetch_code(f"http://{HOST}:{targets.http}/big")))
            assert out.get("len", 0) < BIG, out  # cut: an error, or a short body, never all of it
            await svc.app.state.audit.flush()  # type: ignore[attr-defined]
            r = await c.get("/api/v1/audit", params={"kind": "egress"}, headers=admin())
            cuts = [e["detail"] for e in r.json() if e["action"] == "egress" and e["detail"].get("cut")]
            assert cuts and cuts[0]["cut"] == "bytes" and cuts[0]["bytes_in"] <= (1 << 20) + (64 << 10), cuts
    finally:
        await stop_service(server, task)


@pytest.mark.parametrize("backend_name", ["local"])
async def test_policies_ceiling_and_session_info(client: httpx.AsyncClient, targets: Targets) -> None:
    r = await client.post("/api/v1/sessions", json={"egress": "public"})
    assert r.status_code == 403 and r.json()["error"] == "egress_above_ceiling", r.text
    r = await client.post("/api/v1/sessions", json={"egress": "allowlist", "egress_allow": ["bad entry!"]})
    assert r.status_code == 400 and r.json()["field"] == "egress_allow[0]", r.text
    none = await new_session(client, egress="none")
    assert none["egress"]["mode"] == "none", none
    out = printed(await run(client, none["id"], fetch_code(f"http://{HOST}:{targets.http}/hello")))
    assert out["status"] == 403 and json.loads(out["body"])["rule"] == "policy:none", out
    # A client's own list narrows the admin's: the http port only.
    narrow = await new_session(client, egress="allowlist", egress_allow=[f"{HOST}:{targets.http}"])
    assert printed(await run(client, narrow["id"], fetch_code(f"http://{HOST}:{targets.http}/hello")))["status"] == 200
    # A restarted kernel starts its relay again on the same proxy.
    assert (await client.post(f"/api/v1/sessions/{narrow['id']}/restart")).status_code == 200
    assert printed(await run(client, narrow["id"], fetch_code(f"http://{HOST}:{targets.http}/hello")))["status"] == 200
    out = printed(await run(client, narrow["id"], fetch_code(f"https://{HOST}:{targets.https}/hello", targets.ca_pem)))
    assert "403" in out.get("text", ""), out
    # An admin key may ask for more than the ceiling.
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=admin(), timeout=60) as a:
        r = await a.post("/api/v1/sessions", json={"egress": "public"})
        assert r.status_code == 201 and r.json()["egress"]["mode"] == "public", r.text
        pub = r.json()["id"]
        meta = printed(await run(a, pub, fetch_code("http://169.254.169.254/")))
        assert meta["status"] == 403 and json.loads(meta["body"])["rule"] == "metadata", meta
        await a.delete(f"/api/v1/sessions/{pub}")
    for s in (none, narrow):
        await client.delete(f"/api/v1/sessions/{s['id']}")


CHECKS = [
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1:8080/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://100.64.0.1/", "cgnat"),
    ("http://[fd12:3456::1]/", "unique-local"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://2130706433/", "ip-literal"),
    ("http://0177.0.0.1/", "ip-literal"),
    ("http://0x7f.1/", "ip-literal"),
    ("http://127.0.0.1:22/", "loopback"),
]


@pytest.mark.parametrize("backend_name", ["local"])
async def test_check_explains_without_connecting(client: httpx.AsyncClient, targets: Targets) -> None:
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=admin(), timeout=30) as a:
        for url, rule in CHECKS:
            r = await a.post("/api/v1/egress/check", json={"url": url, "policy": "public"})
            assert r.status_code == 200, (url, r.text)
            body = r.json()
            assert (body["decision"], body["rule"]) == ("refused", rule), (url, body)
        r = await a.post("/api/v1/egress/check", json={"url": f"http://{HOST}:{targets.http}/x"})
        assert r.json()["decision"] == "allowed" and r.json()["addresses"] == [HOST], r.text
        r = await a.post("/api/v1/egress/check", json={"url": "http://example.com/", "policy": "none"})
        assert r.json()["rule"] == "policy:none", r.text
        r = await a.post("/api/v1/egress/check", json={"url": "ftp://example.com/"})
        assert r.status_code == 400 and r.json()["field"] == "url", r.text
        r = await a.post("/api/v1/egress/check", json={"url": "http://x/", "allow": ["a b"]})
        assert r.status_code == 400 and r.json()["field"] == "allow[0]", r.text
    r = await client.post(
        "/api/v1/egress/check", json={"url": "http://example.com/"}, headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert r.status_code == 403, r.text


TOOL = '''
"""
title: Fetcher
"""
import ssl, urllib.request, urllib.error


class Tools:
    def fetch(self, url: str, ca: str = "") -> str:
        """Fetch a URL.
        :param url: what to fetch
        :param ca: a CA certificate (PEM) to trust
        """
        ctx = ssl.create_default_context(cadata=ca) if ca else None
        try:
            with urllib.request.urlopen(url, timeout=20, context=ctx) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read().decode()}"
'''


async def test_a_tool_module_reaches_what_its_policy_allows(client: httpx.AsyncClient, targets: Targets) -> None:
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    form = {"id": "fetcher", "name": "Fetcher", "content": TOOL, "meta": {"description": "f"}, "access_grants": grants}
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=admin(), timeout=60) as a:
        r = await a.post("/api/v1/tools/create", json=form)
        assert r.status_code == 200, r.text
        url = f"http://{HOST}:{targets.http}/hello"
        r = await a.post("/api/v1/tools/id/fetcher/call/fetch", json={"arguments": {"url": url}})
        assert r.status_code == 200 and "policy:none" in r.text, r.text  # the tool default: no network
        r = await a.post(
            "/api/v1/tools/id/fetcher/egress", json={"mode": "allowlist", "allow": [f"{HOST}:{targets.http}"]}
        )
        assert r.status_code == 200 and r.json()["mode"] == "allowlist" and r.json()["source"] == "tool", r.text
        r = await a.post("/api/v1/tools/id/fetcher/call/fetch", json={"arguments": {"url": url}})
        assert r.status_code == 200 and "hello from the target" in r.text, r.text
        r = await a.post(
            "/api/v1/tools/id/fetcher/call/fetch", json={"arguments": {"url": f"http://{HOST}:{targets.https}/"}}
        )
        assert "not-listed" in r.text, r.text
        both = [f"{HOST}:{targets.http}", f"{HOST}:{targets.https}"]
        r = await a.post("/api/v1/tools/id/fetcher/egress", json={"mode": "allowlist", "allow": both})
        assert r.status_code == 200, r.text
        secure = {"url": f"https://{HOST}:{targets.https}/hello", "ca": targets.ca_pem}
        r = await a.post("/api/v1/tools/id/fetcher/call/fetch", json={"arguments": secure})
        assert r.status_code == 200 and "hello from the target" in r.text, r.text  # live sandbox, new policy
        r = await a.post("/api/v1/tools/id/fetcher/egress", json={"mode": "sometimes"})
        assert r.status_code == 422, r.text
        r = await client.post("/api/v1/tools/id/fetcher/egress", json={"mode": "public"})
        assert r.status_code == 403, r.text
        assert (await a.delete("/api/v1/tools/id/fetcher/delete")).status_code == 200
        r = await a.post("/api/v1/tools/create", json=form)
        assert r.status_code == 200
        assert (await a.get("/api/v1/tools/id/fetcher/egress")).json()["source"] == "default"
