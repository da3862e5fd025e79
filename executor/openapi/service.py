"""ToolServerService: the connections, their cached specs, and calls, behind one object per app."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from executor.access.audit import AuditLog
from executor.access.grants import has_access
from executor.access.principal import Principal
from executor.errors import BadGateway, Conflict, Invalid, NotFound, RateLimited, Unauthenticated, Unprocessable
from executor.net import (
    EgressDenied,
    EgressPolicy,
    OutboundClient,
    OutboundLimits,
    OutboundTimeout,
    numeric_host_problem,
    redact,
    same_origin,
)
from executor.openapi.call import build_request, error_result, fill_template, to_result, too_deep
from executor.openapi.convert import Operation
from executor.openapi.document import MAX_SPEC_DEPTH, SpecError, measure
from executor.openapi.load import PreparedSpec, prepare_async
from executor.openapi.models import Connection, ToolServerConfigRow, server_id
from executor.openapi.ratelimit import Limiter, RateLimiter, SharedRateLimiter, retry_after
from executor.openapi.toollist import clean_spec, cut, is_allowed, unique_name
from executor.settings import Settings
from executor.store import Store
from executor.toolresult import ToolResult

log = logging.getLogger(__name__)
CONFIG_KEY = "tool_server_connections"
TOKEN_HEADER = "X-Tool-Server-Token"
TOKEN_AUTH_TYPES = ("session", "system_oauth", "oauth_2.1", "oauth_2.1_static")
USER_INFO_HEADERS = {
    "USER_NAME": "X-OpenWebUI-User-Name",
    "USER_ID": "X-OpenWebUI-User-Id",
    "USER_EMAIL": "X-OpenWebUI-User-Email",
    "USER_ROLE": "X-OpenWebUI-User-Role",
    "CHAT_ID": "X-OpenWebUI-Chat-Id",
    "MESSAGE_ID": "X-OpenWebUI-Message-Id",
}


@dataclass
class SpecEntry:
    """A connection's spec as last fetched, or why it could not be."""

    fingerprint: str
    checked_at: float
    spec: dict[str, Any] | None = None
    ops: list[Operation] = field(default_factory=list)
    etag: str | None = None
    last_modified: str | None = None
    error: SpecError | None = None


def spec_url(conn: Connection) -> str:
    """Open WebUI's rule: ``path`` is appended to ``url`` unless it is a full URL itself."""
    if "://" in conn.path:
        return conn.path
    path = conn.path if conn.path.startswith("/") else "/" + conn.path
    return conn.url.rstrip("/") + path


def check_connection(conn: Connection, where: str = "") -> None:
    """Refuse what would fail later, at every request that uses it: raise :class:`Invalid` naming the field.

    A host in a non-standard IPv4 form, and an inline spec object past the node or depth limits (a deep one
    cannot even be stored: every encoder on the way recurses).
    """
    prefix = f"{where}." if where else ""
    for name in ("url", "path"):
        value = getattr(conn, name)
        if name == "path" and "://" not in value:
            continue
        try:
            host = urlsplit(value).hostname or ""
        except ValueError:
            raise Invalid("bad_url", f"{prefix}{name} is not a URL", field=f"{prefix}{name}") from None
        problem = numeric_host_problem(host)
        if problem:
            raise Invalid("ambiguous_host", f"{prefix}{name}: {problem}", field=f"{prefix}{name}")
    if isinstance(conn.spec, dict):
        try:
            measure(conn.spec)
        except SpecError as exc:
            raise Invalid(exc.code, f"{prefix}spec: {exc.message}", field=f"{prefix}spec") from None
    # Unknown fields are kept for round trips: they must not nest deeper than a spec may.
    for place, extra in (
        ("", conn.model_extra),
        ("config.", conn.config.model_extra),
        ("info.", conn.info.model_extra),
    ):
        for key, value in (extra or {}).items():
            if too_deep(value, MAX_SPEC_DEPTH):
                field = f"{prefix}{place}{key}"
                raise Invalid("too_deep", f"{field} nests deeper than {MAX_SPEC_DEPTH} levels", field=field)


def _fingerprint(conn: Connection) -> str:
    # Connections are replaced, never changed in place: one fingerprint per object (an inline spec can be large).
    cached = _FINGERPRINTS.get(id(conn))
    if cached is not None and cached[0] is conn:
        return cached[1]
    if len(_FINGERPRINTS) > 4096:
        _FINGERPRINTS.clear()
    data = json.dumps([conn.url, conn.path, conn.spec_type, conn.spec, conn.auth_type, conn.key], default=str)
    fingerprint = hashlib.sha256(data.encode()).hexdigest()
    _FINGERPRINTS[id(conn)] = (conn, fingerprint)
    return fingerprint


_FINGERPRINTS: dict[int, tuple[Connection, str]] = {}


def shown_url(conn: Connection, principal: Principal) -> str:
    """The connection's URL as a principal may see it: in full for admins, without query or user info for others."""
    url = conn.url.rstrip("/")
    return url if principal.is_admin else redact(url)


def _scrub(message: str, url: str) -> str:
    # A library's error text may quote the URL it was given; never with its query.
    return message.replace(url, redact(url)) if url else message


def _server_of(tool_id: str) -> str:
    """The server id of an Open WebUI tool id, or "" when it names no OpenAPI server."""
    parts = tool_id.split(":")
    if parts[0] != "server" or len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "openapi"):
        return ""
    return parts[-1].split("|")[0]


def offered(conn: Connection, op: Operation) -> bool:
    """Whether ``config.function_name_filter_list`` lets this function be offered and called."""
    return is_allowed(op.operation_id, conn.config.function_name_filter_list)


class ToolServerService:
    """Created once per app; ``start`` after the store's tables exist, ``close`` on shutdown."""

    def __init__(self, settings: Settings, store: Store, audit: AuditLog) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.policy = EgressPolicy.from_entries(settings.egress_allowlist)
        self.limits = OutboundLimits(
            connect_timeout_s=settings.tool_server_connect_timeout_s,
            read_timeout_s=settings.tool_server_read_timeout_s,
            total_timeout_s=settings.tool_server_timeout_s,
            retries=settings.tool_server_retries,
            backoff_s=settings.tool_server_retry_backoff_s,
            max_redirects=settings.tool_server_max_redirects,
            max_response_bytes=settings.tool_server_max_response_bytes,
        )
        # What one call may return, encoded: the body cap with room for base64 (4/3) and ordinary escapes; text
        # that escapes worse (control characters: 6 bytes each) is cut to fit.
        self.max_result_bytes = 2 * self.limits.max_response_bytes
        self.client: OutboundClient | None = None
        self.connections: list[Connection] = []
        self._cache: dict[str, SpecEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Parsing a large YAML spec is seconds of CPU in a worker thread: a few at a time, so a burst of
        # verify calls cannot take every thread (and the GIL) from the rest of the service.
        self._parsing = asyncio.Semaphore(2)
        self.principal_limiter = self._limiter("principal", settings.tool_server_rate_limit_per_principal)
        self.key_limiter = self._limiter("key", settings.tool_server_rate_limit_per_key)
        self.connection_limiter = self._limiter("connection", settings.tool_server_rate_limit_per_connection)

    def _limiter(self, scope: str, per_minute: int) -> Limiter:
        if self.settings.rate_limit_store == "database":
            return SharedRateLimiter(self.store, f"tool-server-{scope}", per_minute)
        return RateLimiter(per_minute)

    async def start(self) -> None:
        """Open the shared HTTP client and load the connections (saved ones win over the environment)."""
        self.client = OutboundClient(self.policy, self.limits)
        async with self.store.sessionmaker() as db:
            row = await db.get(ToolServerConfigRow, CONFIG_KEY)
        raw = row.value if row is not None else self.settings.tool_server_connections
        self.connections = []
        for i, item in enumerate(raw):
            try:
                connection = Connection.model_validate(item)
                check_connection(connection)
            except ValidationError as exc:
                # Only field locations and messages: the input itself may hold a key.
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                log.error("tool server connection %d ignored: %s", i, problems)
            except Invalid as exc:
                log.error("tool server connection %d ignored: %s", i, exc.message)
            else:
                self.connections.append(connection)
        private = [server_id(c, i) for i, c in enumerate(self.connections) if not c.config.access_grants]
        if private:
            # The first thing a user key will not see: say why once, where the admin looks.
            log.warning(
                "tool servers %s have no config.access_grants, so only admin keys may use them; grant "
                '[{"principal_type": "user", "principal_id": "*", "permission": "read"}] to open one to every user',
                ", ".join(private),
            )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # -- connections -------------------------------------------------------------------------------

    async def save(self, connections: list[Connection]) -> None:
        """Persist the list and drop cached specs of connections that changed."""
        for i, conn in enumerate(connections):
            check_connection(conn, f"TOOL_SERVER_CONNECTIONS[{i}]")
        ids = [server_id(c, i) for i, c in enumerate(connections)]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            idx = ids.index(dupes[0], ids.index(dupes[0]) + 1)
            raise Unprocessable(
                "duplicate_id",
                f"two connections have the id {dupes[0]!r}",
                field=f"TOOL_SERVER_CONNECTIONS[{idx}].info.id",
            )
        async with self.store.sessionmaker() as db, db.begin():
            await db.merge(
                ToolServerConfigRow(
                    key=CONFIG_KEY,
                    value=[c.model_dump(mode="json") for c in connections],
                    updated_at=datetime.now(UTC),
                )
            )
        self.connections = connections
        live = {server_id(c, i): _fingerprint(c) for i, c in enumerate(connections)}
        self._cache = {k: v for k, v in self._cache.items() if live.get(k) == v.fingerprint}

    @staticmethod
    def can_read(conn: Connection, principal: Principal) -> bool:
        """Open WebUI's ``has_connection_access``: admins always; others by a read grant."""
        return has_access(principal, conn.config.access_grants, "read")

    def visible(self, principal: Principal) -> list[tuple[str, int, Connection]]:
        return [(server_id(c, i), i, c) for i, c in enumerate(self.connections) if self.can_read(c, principal)]

    def find(self, ident: str, principal: Principal) -> tuple[int, Connection]:
        for sid, idx, conn in self.visible(principal):
            if sid == ident and conn.type == "openapi":
                return idx, conn
        raise NotFound("tool_server_not_found", f"tool server {ident!r} does not exist")

    # -- specs -------------------------------------------------------------------------------------

    async def fetch_spec(
        self, conn: Connection, previous: SpecEntry | None = None
    ) -> tuple[str | bytes | dict[str, Any] | None, str | None, str | None]:
        """The raw spec of ``conn`` (unparsed); None when the server says ours is still current (304)."""
        if conn.spec_type == "json":
            return conn.spec or "", None, None
        assert self.client is not None, "ToolServerService.start() was not called"
        url = spec_url(conn)
        shown = redact(url)  # what errors (cached, shown to every reader) and logs may say: no query, no user info
        headers = {"Accept": "application/json, application/yaml;q=0.9, */*;q=0.5"}
        # The key belongs to the connection's server: a spec path on another origin is fetched without it.
        if conn.auth_type == "bearer" and conn.key and same_origin(url, conn.url):
            headers["Authorization"] = f"Bearer {conn.key}"
        if previous is not None and previous.spec is not None:
            if previous.etag:
                headers["If-None-Match"] = previous.etag
            if previous.last_modified:
                headers["If-Modified-Since"] = previous.last_modified
        try:
            resp = await self.client.request("GET", url, headers=headers)
        except EgressDenied as exc:
            raise SpecError("egress_denied", f"{exc.message} [rule: {exc.rule}]") from None
        except OutboundTimeout as exc:
            raise SpecError("timeout", f"{shown}: {exc}") from None
        except httpx.HTTPError as exc:
            raise SpecError("unreachable", f"{shown}: {type(exc).__name__}: {_scrub(str(exc), url)}") from None
        if resp.status_code == 304 and previous is not None:
            return None, previous.etag, previous.last_modified
        if resp.status_code in (401, 403):
            raise SpecError("auth_refused", f"{shown} answered HTTP {resp.status_code}: check key and auth_type")
        if resp.status_code != 200:
            raise SpecError("http_error", f"{shown} answered HTTP {resp.status_code}")
        if resp.truncated:
            raise SpecError("too_large", f"the spec is larger than {self.limits.max_response_bytes} bytes")
        return resp.content, resp.headers.get("etag"), resp.headers.get("last-modified")

    async def _prepare(self, raw: str | bytes | dict[str, Any]) -> PreparedSpec:
        async with self._parsing:
            return await prepare_async(raw, max_nodes=self.settings.tool_server_max_spec_nodes)

    async def load(self, sid: str, conn: Connection, *, force: bool = False) -> SpecEntry:
        """The cached spec when fresh; else revalidated or fetched. Never raises: errors are recorded."""
        fingerprint = _fingerprint(conn)
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            entry = self._cache.get(sid)
            if entry is not None and entry.fingerprint != fingerprint:
                entry = None
            now = time.monotonic()
            if (
                entry is not None
                and not force
                and entry.error is None
                and now - entry.checked_at < self.settings.tool_server_spec_ttl_s
            ):
                return entry
            try:
                raw, etag, modified = await self.fetch_spec(conn, entry)
                if raw is None and entry is not None:  # 304: still current
                    entry.checked_at = now
                    return entry
                assert raw is not None
                prepared = await self._prepare(raw)
                entry = SpecEntry(fingerprint, now, prepared.spec, prepared.ops, etag, modified)
            except SpecError as exc:
                log.warning("tool server %s: spec unusable: %s (%s)", sid, exc.code, exc.message)
                entry = SpecEntry(fingerprint, now, error=exc)
            self._cache[sid] = entry
            return entry

    async def verify(self, conn: Connection) -> dict[str, Any]:
        """Fetch and check one connection without saving it; raise :class:`Invalid` (400) naming the problem."""
        check_connection(conn)
        try:
            raw, _, _ = await self.fetch_spec(conn)
            assert raw is not None
            prepared = await self._prepare(raw)
        except SpecError as exc:
            field = "spec" if conn.spec_type == "json" else "url"
            raise Invalid(exc.code, exc.message, field=field) from None
        spec = prepared.spec
        return {"ok": True, "info": spec.get("info", {}), "openapi": spec.get("openapi"), "operations": prepared.count}

    async def status(self, principal: Principal) -> list[dict[str, Any]]:
        """Every visible connection with its status; one failing server does not hide the others."""
        visible = self.visible(principal)

        async def one(sid: str, idx: int, conn: Connection) -> dict[str, Any]:
            item: dict[str, Any] = {
                "id": sid,
                "idx": idx,
                "type": conn.type,
                "url": shown_url(conn, principal),
                "name": conn.info.name,
                "description": conn.info.description,
                "status": "ok",
                "error": None,
                "operations": 0,
            }
            if conn.type != "openapi":
                item["status"] = "unsupported"
            elif not conn.config.enable:
                item["status"] = "disabled"
            else:
                entry = await self.load(sid, conn)
                if entry.error is not None:
                    item["status"] = "error"
                    item["error"] = {"code": entry.error.code, "message": entry.error.message}
                else:
                    item["operations"] = len(entry.ops)
                    info = (entry.spec or {}).get("info") or {}
                    item["name"] = item["name"] or info.get("title")
                    item["description"] = item["description"] or info.get("description")
            return item

        return list(await asyncio.gather(*(one(*v) for v in visible)))

    async def specs(self, ident: str, principal: Principal) -> dict[str, Any]:
        idx, conn = self.find(ident, principal)
        if not conn.config.enable:
            raise Conflict("tool_server_disabled", f"tool server {ident!r} is disabled")
        entry = await self.load(ident, conn)
        if entry.error is not None:
            raise BadGateway(entry.error.code, f"tool server {ident!r}: {entry.error.message}")
        return {
            "id": ident,
            "idx": idx,
            "url": shown_url(conn, principal),
            "info": (entry.spec or {}).get("info") or {},
            "specs": [op.payload for op in entry.ops if offered(conn, op)],
        }

    async def all_functions(
        self, principal: Principal, tool_ids: list[str] | None = None, taken: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every function of every usable server, named as Open WebUI's ``get_tools`` names them.

        ``tool_ids`` picks servers the way Open WebUI's ``get_tools`` reads them (``server:ID``,
        ``server:openapi:ID``; other types and unknown ids are skipped; a ``|fn,...`` suffix is parsed and, as
        there, selects nothing), in that order, repeats included.
        """
        out: list[dict[str, Any]] = []
        usable = [v for v in self.visible(principal) if v[2].type == "openapi" and v[2].config.enable]
        if tool_ids is not None:
            by_id = {v[0]: v for v in usable}
            picked = [by_id.get(_server_of(t)) for t in tool_ids]
            usable = [v for v in picked if v is not None]
        entries = await asyncio.gather(*(self.load(sid, conn) for sid, _, conn in usable))
        taken = set() if taken is None else taken  # names earlier sources (tool modules) already gave out
        for (sid, _, conn), entry in zip(usable, entries, strict=True):
            for op in entry.ops:
                if not offered(conn, op):
                    continue
                full = unique_name(op.operation_id, sid, taken)
                taken.add(full)
                name = cut(full)
                out.append(
                    {
                        "name": name,
                        "kind": "tool_server",
                        "server_id": sid,
                        "operation_id": op.operation_id,
                        "call": f"/api/v1/tool_servers/{sid}/call/{op.operation_id}",
                        "spec": {**clean_spec(op.payload), "name": name},
                    }
                )
        return out

    # -- calls -------------------------------------------------------------------------------------

    async def _rate_limit(self, sid: str, principal: Principal) -> None:
        """Per principal (one end user), per key (all its users) and per connection; a refusal refunds the rest."""
        limits = [
            (self.principal_limiter, principal.id, "you" if principal.end_user else "this API key"),
            (self.key_limiter, principal.key_id, "this API key, all its users together"),
            (self.connection_limiter, sid, f"tool server {sid!r}"),
        ]
        for n, (limiter, bucket, who) in enumerate(limits):
            wait = await limiter.take(bucket)
            if wait is not None:
                for earlier, earlier_bucket, _ in limits[:n]:
                    await earlier.refund(earlier_bucket)
                seconds = retry_after(wait)
                raise RateLimited(
                    "rate_limited", f"too many tool-server calls for {who}; retry in {seconds}s",
                    retry_after_s=int(seconds),
                )  # fmt: skip

    def _headers(self, conn: Connection, token: str | None, identity: dict[str, str]) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": "application/json, */*;q=0.5"}
        if conn.auth_type == "bearer" and conn.key:
            headers["Authorization"] = f"Bearer {conn.key}"
        elif conn.auth_type in TOKEN_AUTH_TYPES:
            if not token:
                raise Unauthenticated(
                    "token_required",
                    f"tool server auth_type {conn.auth_type!r} needs the caller's token in {TOKEN_HEADER}",
                    field=TOKEN_HEADER,
                )
            headers["Authorization"] = f"Bearer {token}"
        for name, value in (conn.headers or {}).items():
            headers["Authorization" if name.lower() == "authorization" else name] = fill_template(value, identity)
        if self.settings.tool_server_forward_user_info:
            for var, header in USER_INFO_HEADERS.items():
                if identity.get(var):
                    headers[header] = fill_template(identity[var], {})
        return headers

    async def call(
        self,
        ident: str,
        operation_id: str,
        arguments: dict[str, Any],
        principal: Principal,
        *,
        token: str | None = None,
        identity: dict[str, str] | None = None,
    ) -> ToolResult:
        """Call one operation with the connection's credentials and shape the answer as a ToolResult.

        The URL is always ``{connection url}{operation path}`` (Open WebUI's rule): a spec's ``servers`` are
        ignored, so the connection's credentials never go to a host the admin did not configure.
        """
        _, conn = self.find(ident, principal)
        if not conn.config.enable:
            raise Conflict("tool_server_disabled", f"tool server {ident!r} is disabled")
        entry = await self.load(ident, conn)
        if entry.error is not None:
            raise BadGateway(entry.error.code, f"tool server {ident!r}: {entry.error.message}")
        op = next((o for o in entry.ops if o.operation_id == operation_id and offered(conn, o)), None)
        if op is None:
            raise NotFound("operation_not_found", f"tool server {ident!r} has no operation {operation_id!r}")
        if not conn.url:
            raise Conflict("tool_server_without_url", f"tool server {ident!r} has no url to call", field="url")
        await self._rate_limit(ident, principal)
        ident_vars = {"USER_ID": principal.user_id, **(identity or {})}
        prepared = build_request(op, conn.url, arguments, self._headers(conn, token, ident_vars))
        assert self.client is not None, "ToolServerService.start() was not called"
        started = datetime.now(UTC)
        try:
            resp = await self.client.request(
                prepared.method, prepared.url, headers=prepared.headers, json=prepared.json_body
            )
        except EgressDenied as exc:
            result = error_result("EgressDenied", f"{exc.message} [rule: {exc.rule}]", started, datetime.now(UTC))
        except OutboundTimeout as exc:
            result = error_result("Timeout", str(exc), started, datetime.now(UTC))
        except httpx.HTTPError as exc:
            message = f"{type(exc).__name__}: {_scrub(str(exc), str(prepared.url))}"
            result = error_result("ConnectionError", message, started, datetime.now(UTC))
        else:
            log.info("tool server %s: %s -> HTTP %d", ident, operation_id, resp.status_code)
            result = to_result(
                resp, started, datetime.now(UTC), function_name=operation_id, max_bytes=self.max_result_bytes
            )
        self.audit.record(
            "tool_call",
            "tool_server.call",
            principal=principal,
            target=f"{ident}/{operation_id}"[:255],
            status=result.http_status,
            duration_ms=result.duration_ms,
            detail={"result": result.status, **({"error": result.error.name} if result.error else {})},
        )
        return result
