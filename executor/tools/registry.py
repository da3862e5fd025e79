"""ToolRegistry: the tool modules, their valves and user valves, and who may do what with them.

The service never imports a tool file: the frontmatter is read as text here, and everything that needs the code
(specs and Valves schemas on create and update, valves validation, select options resolved per user) goes through
the :class:`~executor.tools.records.ToolRuntime` the registry is given, which runs it in sandboxes.

Access follows Open WebUI 0.12.4's tool router, with its grants (``executor.access.grants``): reading (list, get,
user valves) needs the owner, a read or write grant, or an admin; changing it (update, delete, access, valves)
needs the owner, a write grant or an admin, *also on update*, where Open WebUI once forgot the check. Changing
the code needs, beyond write access, the right to create tools (Open WebUI's ``can_change_tool_code``). A tool's
owner is the principal id that created it (``key-…`` or ``key-…/end-user``); user valves are kept per principal
id, i.e. per end user behind one chat backend's key. Not readable is 404; readable but not writable is 403.

Every change is audited with field names only, never a valve value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from typing import Any

import httpx
from sqlalchemy import delete, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from executor.access.audit import AuditLog
from executor.access.grants import AccessGrant, has_access
from executor.access.principal import Principal
from executor.errors import BadGateway, Forbidden, Invalid, NotFound, TooLarge
from executor.net import EgressDenied, EgressPolicy, OutboundClient, OutboundLimits, OutboundTimeout, redact
from executor.settings import Settings
from executor.store import Store
from executor.tools.frontmatter import extract_frontmatter
from executor.tools.models import (
    BuildStatus,
    LoadedTool,
    ToolAccessResponse,
    ToolForm,
    ToolMeta,
    ToolModel,
    ToolResponse,
    ToolRow,
    ToolUserResponse,
    UserValvesRow,
)
from executor.tools.records import ToolRecord, ToolRuntime, ValvesInvalid, ValvesKind, content_hash
from executor.tools.requirements import parse_requirements
from executor.tools.valves import masked, masked_schema, merged_for_update

log = logging.getLogger(__name__)

# Open WebUI's messages (open_webui/constants.py, routers/tools.py), so its UI shows what it would.
ID_TAKEN = "Uh-oh! This id is already registered. Please choose another id string."
BAD_ID = "Only alphanumeric characters and underscores are allowed in the id"
MAX_VALVES = 1000


def github_url_to_raw_url(url: str) -> str:
    """Open WebUI's rewrite of a GitHub page URL to its raw file (a folder gets ``main.py``)."""
    m1 = re.match(r"https://github\.com/([^/]+)/([^/]+)/tree/([^/]+)/(.*)", url)
    if m1:
        org, repo, branch, path = m1.groups()
        return f"https://raw.githubusercontent.com/{org}/{repo}/refs/heads/{branch}/{path.rstrip('/')}/main.py"
    m2 = re.match(r"https://github\.com/([^/]+)/([^/]+)/blob/([^/]+)/(.*)", url)
    if m2:
        org, repo, branch, path = m2.groups()
        return f"https://raw.githubusercontent.com/{org}/{repo}/refs/heads/{branch}/{path}"
    return url


def tool_name_from_url(url: str) -> str:
    """Open WebUI's name for a loaded file: the file's stem, or the folder of a ``main.py``/``index.py``."""
    parts = url.rstrip("/").split("/")
    file_name = parts[-1]
    if file_name.endswith(".py") and not file_name.startswith(("main.py", "index.py", "__init__.py")):
        return file_name[:-3]
    return parts[-2] if len(parts) > 1 else "function"


def _now() -> int:
    return int(time.time())


def _grants(row: ToolRow) -> list[AccessGrant]:
    return [AccessGrant.model_validate(g) for g in row.access_grants or []]


def to_record(row: ToolRow) -> ToolRecord:
    """The stored row as the dispatcher needs it (valves in clear)."""
    return ToolRecord(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        content=row.content,
        content_hash=row.content_hash,
        specs=list(row.specs or []),
        meta=dict(row.meta or {}),
        access_grants=_grants(row),
        valves=dict(row.valves or {}),
        valves_schema=row.valves_schema,
        user_valves_schema=row.user_valves_schema,
        restricted=bool(row.restricted),
        requirements=list(row.requirements or []),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _base(row: ToolRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "name": row.name,
        "meta": ToolMeta.model_validate(row.meta or {}),
        "access_grants": _grants(row),
        "updated_at": row.updated_at,
        "created_at": row.created_at,
        "restricted": bool(row.restricted),
        "status": row.status or "ready",
        "status_detail": row.status_detail,
    }


def _has_dynamic_options(schema: dict[str, Any]) -> bool:
    # Only options named by a method need the model (resolve_valves_schema_options); a stored schema already
    # holds static option lists, since json_schema_extra is part of it.
    for prop in (schema.get("properties") or {}).values():
        extra = prop.get("input") if isinstance(prop, dict) else None
        if isinstance(extra, dict) and isinstance(extra.get("options"), str) and extra["options"]:
            return True
    return False


class ToolRegistry:
    """One per app. ``start`` after the tables exist (opens the outbound client of ``load_url``), ``close``."""

    def __init__(self, store: Store, audit: AuditLog, runtime: ToolRuntime, settings: Settings) -> None:
        self.store = store
        self.audit = audit
        self.runtime = runtime
        self.settings = settings
        self.policy = EgressPolicy.from_entries(settings.egress_allowlist)
        self.limits = OutboundLimits(
            connect_timeout_s=settings.tool_server_connect_timeout_s,
            read_timeout_s=settings.tool_server_read_timeout_s,
            total_timeout_s=settings.tool_server_timeout_s,
            retries=settings.tool_server_retries,
            backoff_s=settings.tool_server_retry_backoff_s,
            max_redirects=settings.tool_server_max_redirects,
            max_response_bytes=settings.tool_max_bytes,
        )
        self.client: OutboundClient | None = None
        # One change at a time per tool id: create and update await a sandbox between their read and their write.
        self._locks = [asyncio.Lock() for _ in range(64)]

    async def start(self) -> None:
        self.client = OutboundClient(self.policy, self.limits)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _lock(self, key: str) -> asyncio.Lock:
        # A fixed set of locks chosen by hash: bounded however many tools and end users there are; two keys
        # sharing a lock only wait for each other.
        return self._locks[hash(key) % len(self._locks)]

    # -- reads the dispatcher uses ----------------------------------------------------------------------------

    async def _row(self, tool_id: str) -> ToolRow | None:
        async with self.store.sessionmaker() as db:
            return await db.get(ToolRow, tool_id)

    @staticmethod
    def may_read(principal: Principal, row: ToolRow | ToolRecord) -> bool:
        """Owner, a read or write grant, or an admin."""
        grants = row.access_grants if isinstance(row, ToolRecord) else _grants(row)
        return (
            row.user_id == principal.id
            or has_access(principal, grants, "read")
            or has_access(principal, grants, "write")
        )

    @staticmethod
    def may_write(principal: Principal, row: ToolRow | ToolRecord) -> bool:
        """Owner, a write grant, or an admin."""
        grants = row.access_grants if isinstance(row, ToolRecord) else _grants(row)
        return row.user_id == principal.id or has_access(principal, grants, "write")

    async def _readable(self, principal: Principal, tool_id: str) -> ToolRow:
        row = await self._row(tool_id)
        if row is None or not self.may_read(principal, row):
            raise NotFound("tool_not_found", f"tool {tool_id!r} does not exist")
        return row

    async def _writable(self, principal: Principal, tool_id: str) -> ToolRow:
        row = await self._readable(principal, tool_id)
        if not self.may_write(principal, row):
            raise Forbidden("tool_write_forbidden", f"tool {tool_id!r}: this needs write access (owner, a write "
                            "grant, or an admin)")  # fmt: skip
        return row

    async def record(self, principal: Principal, tool_id: str) -> ToolRecord:
        """The tool ``principal`` may read (404 otherwise), valves in clear: for the dispatcher only."""
        return to_record(await self._readable(principal, tool_id))

    async def usable(self, principal: Principal) -> list[ToolRecord]:
        """Every tool ``principal`` may read (and so call), newest change first."""
        async with self.store.sessionmaker() as db:
            rows = list(await db.scalars(select(ToolRow).order_by(ToolRow.updated_at.desc())))
        return [to_record(r) for r in rows if self.may_read(principal, r)]

    async def every(self) -> list[ToolRecord]:
        """Every registered tool, oldest first, whoever may read it: for giving out names only."""
        # created_at has whole seconds: SQLite's rowid keeps the order of creation within one.
        tie = literal_column("rowid") if self.store.url.startswith("sqlite") else ToolRow.id
        async with self.store.sessionmaker() as db:
            rows = list(await db.scalars(select(ToolRow).order_by(ToolRow.created_at, tie)))
        return [to_record(r) for r in rows]

    async def for_call(self, principal: Principal, tool_id: str) -> tuple[ToolRecord, dict[str, Any]]:
        """The tool (404 unless readable) and the caller's own user valves, secrets in clear: for calls.
        One database session for both: this is on every call's path."""
        async with self.store.sessionmaker() as db:
            row = await db.get(ToolRow, tool_id)
            if row is None or not self.may_read(principal, row):
                raise NotFound("tool_not_found", f"tool {tool_id!r} does not exist")
            mine = await db.get(UserValvesRow, (tool_id, principal.id))
        return to_record(row), dict(mine.valves) if mine is not None else {}

    async def user_valves_of(self, tool_id: str, principal: Principal) -> dict[str, Any]:
        """The user valves ``principal`` (one end user) stored for ``tool_id``, secrets in clear: for calls."""
        async with self.store.sessionmaker() as db:
            row = await db.get(UserValvesRow, (tool_id, principal.id))
        return dict(row.valves) if row is not None else {}

    async def set_status(self, tool_id: str, status: BuildStatus, detail: str | None = None) -> None:
        """Record the requirements build state of a tool (for executor/tools/requirements.py)."""
        async with self.store.sessionmaker() as db, db.begin():
            row = await db.get(ToolRow, tool_id)
            if row is not None:
                row.status = status
                row.status_detail = detail

    # -- create, read, update, delete ----------------------------------------------------------------------

    def _restricted(self, principal: Principal, asked: bool | None, current: bool | None) -> bool:
        if principal.is_admin:
            return asked if asked is not None else bool(current)
        forced = self.settings.tool_restrict_non_admin or bool(current)
        if asked is False and forced:
            raise Forbidden("restricted_admin_only", "only an admin may run this tool unrestricted", field="restricted")
        return forced or bool(asked)

    def _check_content(self, content: str) -> None:
        if len(content.encode("utf-8", errors="surrogatepass")) > self.settings.tool_max_bytes:
            raise TooLarge("tool_too_large", f"a tool file is at most {self.settings.tool_max_bytes} bytes",
                           field="content")  # fmt: skip

    async def create(self, principal: Principal, form: ToolForm) -> ToolResponse:
        """Register a tool: extracted in a sandbox first; on any failure nothing is stored."""
        if not principal.can_create_tools:
            raise Forbidden("tool_create_forbidden", "creating tools needs an admin key, or a key the admin "
                            "allowed to create tools (may_create_tools)")  # fmt: skip
        # Open WebUI checks the id as given, then lowercases it. ASCII only here: the id names sandboxes too.
        if not form.id.isidentifier() or not form.id.isascii():
            raise Invalid("bad_id", BAD_ID, field="id")
        tool_id = form.id.lower()
        self._check_content(form.content)
        async with self._lock(tool_id):
            if await self._row(tool_id) is not None:
                raise Invalid("id_taken", ID_TAKEN, field="id")
            restricted = self._restricted(principal, form.restricted, None)
            frontmatter = extract_frontmatter(form.content)
            reqs = list(parse_requirements(frontmatter.get("requirements")).items)
            extracted = await self.runtime.extract(
                tool_id, form.content, restricted=restricted, requirements=reqs, principal=principal
            )
            meta = form.meta.model_copy(
                update={"manifest": frontmatter, "has_user_valves": extracted.user_valves_schema is not None}
            )
            now = _now()
            row = ToolRow(
                id=tool_id,
                user_id=principal.id,
                name=form.name,
                content=form.content,
                content_hash=content_hash(form.content),
                specs=extracted.specs,
                meta=meta.model_dump(mode="json"),
                access_grants=[g.model_dump() for g in form.access_grants or []],
                valves={},
                valves_schema=extracted.valves_schema,
                user_valves_schema=extracted.user_valves_schema,
                restricted=restricted,
                requirements=reqs,
                status="ready",
                status_detail=None,
                created_at=now,
                updated_at=now,
            )
            try:
                async with self.store.sessionmaker() as db, db.begin():
                    db.add(row)
            except IntegrityError:
                # Another process of the service took the id meanwhile.
                raise Invalid("id_taken", ID_TAKEN, field="id") from None
        self.audit.record(
            "admin", "tool.create", principal=principal, target=tool_id,
            detail={"name": form.name, "restricted": restricted, "content_hash": row.content_hash,
                    "requirements": reqs, "grants": len(row.access_grants)},
        )  # fmt: skip
        return ToolResponse(**_base(row))

    async def list_tools(self, principal: Principal) -> list[ToolUserResponse]:
        """Tools the caller may read, newest change first, without their source (Open WebUI's ``GET /tools/``)."""
        async with self.store.sessionmaker() as db:
            rows = list(
                await db.scalars(select(ToolRow).options(defer(ToolRow.content)).order_by(ToolRow.updated_at.desc()))
            )
        out = []
        for row in rows:
            if self.may_read(principal, row):
                meta = row.meta or {}
                out.append(
                    ToolUserResponse(
                        **_base(row),
                        user=None,
                        content=None,
                        specs=row.specs,
                        has_user_valves=bool(meta.get("has_user_valves")),
                    )
                )
        return out

    async def list_access(self, principal: Principal) -> list[ToolAccessResponse]:
        """Open WebUI's ``GET /tools/list``: the readable tools, each with ``write_access``."""
        async with self.store.sessionmaker() as db:
            rows = list(
                await db.scalars(select(ToolRow).options(defer(ToolRow.content)).order_by(ToolRow.updated_at.desc()))
            )
        return [
            ToolAccessResponse(
                **_base(r), user=None, content=None, specs=r.specs, write_access=self.may_write(principal, r)
            )
            for r in rows
            if self.may_read(principal, r)
        ]

    async def get(self, principal: Principal, tool_id: str) -> ToolAccessResponse:
        """One tool with ``write_access``; its source only for writers (Open WebUI pops it for readers)."""
        row = await self._readable(principal, tool_id)
        write = self.may_write(principal, row)
        extra: dict[str, Any] = {"content": row.content} if write else {}
        return ToolAccessResponse(**_base(row), user=None, specs=row.specs, write_access=write, **extra)

    async def update(self, principal: Principal, tool_id: str, form: ToolForm) -> ToolModel:
        """Change name, meta, content (re-extracted in a sandbox) or ``restricted``; grants change through
        :meth:`update_access`, as in Open WebUI. Nothing is stored when the new code does not load."""
        self._check_content(form.content)
        async with self._lock(tool_id):
            row = await self._writable(principal, tool_id)
            code_changed = form.content != row.content
            if code_changed and not principal.can_create_tools:
                raise Forbidden("tool_code_forbidden", "changing a tool's code needs an admin key, or a key "
                                    "the admin allowed to create tools", field="content")  # fmt: skip
            restricted = self._restricted(principal, form.restricted, row.restricted)
            reload = code_changed or restricted != row.restricted
            frontmatter = extract_frontmatter(form.content)
            reqs = list(parse_requirements(frontmatter.get("requirements")).items)
            specs, valves_schema, user_valves_schema = row.specs, row.valves_schema, row.user_valves_schema
            if reload:
                extracted = await self.runtime.extract(
                    tool_id, form.content, restricted=restricted, requirements=reqs, principal=principal
                )
                specs = extracted.specs
                valves_schema, user_valves_schema = extracted.valves_schema, extracted.user_valves_schema
                candidate = dataclasses.replace(
                    to_record(row),
                    content=form.content,
                    content_hash=content_hash(form.content),
                    specs=specs,
                    valves_schema=valves_schema,
                    user_valves_schema=user_valves_schema,
                    restricted=restricted,
                    requirements=reqs,
                )
                await self._check_stored_valves(candidate, principal)
            meta = form.meta.model_copy(
                update={"manifest": frontmatter, "has_user_valves": user_valves_schema is not None}
            )
            async with self.store.sessionmaker() as db, db.begin():
                current = await db.get(ToolRow, tool_id)
                if current is None:
                    raise NotFound("tool_not_found", f"tool {tool_id!r} does not exist")
                current.name = form.name
                current.content = form.content
                current.content_hash = content_hash(form.content)
                current.specs = specs
                current.meta = meta.model_dump(mode="json")
                current.valves_schema = valves_schema
                current.user_valves_schema = user_valves_schema
                current.restricted = restricted
                current.requirements = reqs
                current.updated_at = _now()
                row = current
        if reload:
            await self.runtime.forget(tool_id)
        self.audit.record(
            "admin", "tool.update", principal=principal, target=tool_id,
            detail={"name": form.name, "restricted": restricted, "content_hash": row.content_hash,
                    "code_changed": code_changed, "requirements": reqs},
        )  # fmt: skip
        return ToolModel(**_base(row), content=row.content, specs=row.specs)

    async def _check_stored_valves(self, candidate: ToolRecord, principal: Principal) -> None:
        # Open WebUI 0.12.4 refuses new code its saved Valves no longer fit (fields only missing are fine:
        # they are filled in after saving).
        if not candidate.valves or candidate.valves_schema is None:
            return
        try:
            await self.runtime.validate_valves(candidate, principal, "valves", dict(candidate.valves))
        except ValvesInvalid as exc:
            problems = [e for e in exc.errors if e.get("type") != "missing"]
            if not problems:
                return
            detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', 'invalid')}" for e in problems)
            first = ".".join(map(str, problems[0].get("loc", [])))
            raise Invalid(
                "valves_incompatible",
                f"Current Valves are incompatible with this code: {detail}",
                field=f"valves.{first}" if first else "valves",
            ) from None

    async def update_access(self, principal: Principal, tool_id: str, grants: list[AccessGrant]) -> ToolModel:
        """Replace who may read and write the tool (write access needed)."""
        async with self._lock(tool_id):
            await self._writable(principal, tool_id)
            async with self.store.sessionmaker() as db, db.begin():
                row = await db.get(ToolRow, tool_id)
                if row is None:
                    raise NotFound("tool_not_found", f"tool {tool_id!r} does not exist")
                row.access_grants = [g.model_dump() for g in grants]
        self.audit.record(
            "admin", "tool.access", principal=principal, target=tool_id,
            detail={"grants": [g.model_dump() for g in grants]},
        )  # fmt: skip
        return ToolModel(**_base(row), content=row.content, specs=row.specs)

    async def delete(self, principal: Principal, tool_id: str) -> bool:
        """Delete a tool, its valves and every user's user valves, and close its sandboxes."""
        async with self._lock(tool_id):
            await self._writable(principal, tool_id)
            async with self.store.sessionmaker() as db, db.begin():
                await db.execute(delete(ToolRow).where(ToolRow.id == tool_id))
                await db.execute(delete(UserValvesRow).where(UserValvesRow.tool_id == tool_id))
        await self.runtime.forget(tool_id)
        self.audit.record("admin", "tool.delete", principal=principal, target=tool_id)
        return True

    # -- valves ---------------------------------------------------------------------------------------------

    @staticmethod
    def _schema(row: ToolRow, kind: ValvesKind) -> dict[str, Any] | None:
        return row.valves_schema if kind == "valves" else row.user_valves_schema

    async def valves(self, principal: Principal, tool_id: str) -> dict[str, Any]:
        """The tool's valves (write access), secrets masked."""
        row = await self._writable(principal, tool_id)
        return masked(row.valves, row.valves_schema)

    async def user_valves(self, principal: Principal, tool_id: str) -> dict[str, Any]:
        """The caller's own user valves of the tool (read access), secrets masked."""
        row = await self._readable(principal, tool_id)
        return masked(await self.user_valves_of(tool_id, principal), row.user_valves_schema)

    async def valves_spec(self, principal: Principal, tool_id: str, kind: ValvesKind) -> dict[str, Any] | None:
        """The model's JSON schema (null when the tool has none), select options resolved for the caller,
        secret defaults masked. Valves need write access, user valves read access."""
        row = await (self._writable(principal, tool_id) if kind == "valves" else self._readable(principal, tool_id))
        schema = self._schema(row, kind)
        if schema is None:
            return None
        if _has_dynamic_options(schema):
            schema = await self.runtime.valves_spec(to_record(row), principal, kind)
        return masked_schema(schema)

    async def update_valves(
        self, principal: Principal, tool_id: str, kind: ValvesKind, form: dict[str, Any]
    ) -> dict[str, Any]:
        """Validate (in the tool's sandbox) and store the set fields, replacing what was stored, as Open WebUI
        does; a masked secret keeps its stored value. Returns the stored values, secrets masked."""
        if len(form) > MAX_VALVES:
            raise Invalid("too_many_valves", f"at most {MAX_VALVES} fields", field=kind)
        async with self._lock(f"{tool_id}\0{kind}\0{principal.id}"):
            if kind == "valves":
                row = await self._writable(principal, tool_id)
                stored = dict(row.valves or {})
            else:
                row = await self._readable(principal, tool_id)
                stored = await self.user_valves_of(tool_id, principal)
            schema = self._schema(row, kind)
            if schema is None:
                model = "Valves" if kind == "valves" else "UserValves"
                raise NotFound("no_valves", f"tool {tool_id!r} defines no {model}")
            values, kept = merged_for_update(form, stored, schema)
            validated = await self.runtime.validate_valves(to_record(row), principal, kind, values)
            now = _now()
            async with self.store.sessionmaker() as db, db.begin():
                if kind == "valves":
                    current = await db.get(ToolRow, tool_id)
                    if current is None:
                        raise NotFound("tool_not_found", f"tool {tool_id!r} does not exist")
                    current.valves = validated
                    current.updated_at = now
                else:
                    await db.merge(
                        UserValvesRow(tool_id=tool_id, principal=principal.id, valves=validated, updated_at=now)
                    )
        # Field names only: a value may be a secret.
        self.audit.record(
            "admin", f"tool.{kind}.update", principal=principal, target=tool_id,
            detail={"fields": sorted(validated), "kept_secrets": sorted(kept)},
        )  # fmt: skip
        return masked(validated, schema)

    # -- load from a URL ------------------------------------------------------------------------------------

    async def load_url(self, url: str) -> LoadedTool:
        """Fetch a tool file (GitHub page URLs rewritten to raw files) through the outbound policy, capped at
        ``tool_max_bytes``; returns Open WebUI's ``{name, content}``. Nothing is stored."""
        if not url:
            raise Invalid("bad_url", "Please enter a valid URL", field="url")
        url = github_url_to_raw_url(url)
        name = tool_name_from_url(url)
        shown = redact(url)
        client = self.client
        if client is None:
            raise RuntimeError("ToolRegistry.start was not awaited")
        try:
            resp = await client.request("GET", url)
        except EgressDenied as exc:
            raise Invalid("egress_denied", f"{shown}: {exc.message} [rule: {exc.rule}]", field="url") from None
        except OutboundTimeout as exc:
            raise BadGateway("fetch_timeout", f"{shown}: {exc}") from None
        except httpx.HTTPError as exc:
            raise BadGateway("fetch_failed", f"{shown}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise BadGateway("fetch_failed", f"Failed to fetch the tool: {shown} answered HTTP {resp.status_code}")
        if resp.truncated:
            raise TooLarge("tool_too_large", f"a tool file is at most {self.settings.tool_max_bytes} bytes",
                           field="url")  # fmt: skip
        if not resp.content:
            raise Invalid("no_data", "No data received from the URL", field="url")
        return LoadedTool(name=name, content=resp.text())
