"""Who may reach what from a sandbox: the policies in force, one proxy per sandbox, the audit of each decision.

A session's policy is the admin's default unless the client asks for another, and a non-admin may ask only up to
``EXECUTOR_EGRESS_CLIENT_MAX``; a client's own host list only narrows what the admin's list allows. A tool
module's policy is set by an admin (stored in ``tool_egress``). The proxy of a sandbox is bound when the sandbox is
handed to its session or tool, on the Unix socket the backend offers (``Sandbox.egress_socket``), and closed
before the sandbox is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import JSON, BigInteger, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.audit import AuditLog
from executor.egress.policy import RANK, BoundedResolver, Decision, Mode, Rule, SandboxPolicy, decide
from executor.egress.proxy import EgressRecord, ProxyLimits, SandboxProxy
from executor.errors import Forbidden, Invalid
from executor.settings import Settings
from executor.store import Base, Store
from sandboxes.base import Sandbox

log = logging.getLogger(__name__)


class ToolEgressRow(Base):
    """An admin's egress policy for one tool module (none stored: the tool default)."""

    __tablename__ = "tool_egress"

    tool_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    allow: Mapped[list[str]] = mapped_column(JSON)
    updated_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)


def field_rules(entries: list[str], field_name: str) -> tuple[Rule, ...]:
    """Rules of a host list; Invalid naming the field and the entry for a bad one."""
    rules: list[Rule] = []
    for i, entry in enumerate(entries):
        try:
            rules.append(Rule.parse(entry))
        except ValueError as exc:
            raise Invalid("bad_egress_entry", str(exc), field=f"{field_name}[{i}]") from None
    return tuple(rules)


@dataclass
class _Bound:
    proxy: SandboxProxy
    owner: str
    subject: str
    started: float = field(default_factory=time.monotonic)


class EgressService:
    """One per app: policies, the proxies of live sandboxes, the explain-a-decision check."""

    def __init__(self, settings: Settings, store: Store, audit: AuditLog | None) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        try:
            self.session_allow = tuple(Rule.parse(e) for e in settings.egress_sandbox_allowlist)
        except ValueError as exc:
            raise ValueError(f"EXECUTOR_EGRESS_SANDBOX_ALLOWLIST: {exc}") from None
        mb = 1 << 20
        self.limits = ProxyLimits(
            max_connections=settings.egress_max_connections,
            max_bytes_in=settings.egress_max_mb_in * mb,
            max_bytes_out=settings.egress_max_mb_out * mb,
            connection_timeout_s=settings.egress_connection_timeout_s,
            idle_timeout_s=settings.egress_idle_timeout_s,
        )
        self._bound: dict[str, _Bound] = {}
        self.resolve = BoundedResolver()

    # -- policies ------------------------------------------------------------------------------------------
    def session_policy(self, asked: str | None, narrow: list[str] | None, *, admin: bool) -> SandboxPolicy:
        """The policy of a new session. Forbidden when a non-admin asks above the ceiling."""
        mode = Mode(asked or self.settings.egress_default)
        ceiling = Mode(self.settings.egress_client_max)
        if asked is not None and not admin and RANK[mode] > RANK[ceiling] and mode != self.settings.egress_default:
            raise Forbidden(
                "egress_above_ceiling",
                f"egress policy {mode.value!r} is above what clients may ask for here ({ceiling.value!r}, "
                "EXECUTOR_EGRESS_CLIENT_MAX)",
                field="egress",
            )
        rules = field_rules(narrow, "egress_allow") if narrow is not None else None
        if rules is not None and mode == Mode.NONE:
            raise Invalid(
                "egress_allow_without_policy", "egress_allow needs policy allowlist or public", field="egress_allow"
            )
        return SandboxPolicy(mode=mode, allow=self.session_allow, narrow=rules)

    async def tool_policy(self, tool_id: str) -> SandboxPolicy:
        """The admin's policy for a tool module, or the tool default (no hosts)."""
        row = await self._tool_row(tool_id)
        if row is None:
            return SandboxPolicy(mode=Mode(self.settings.egress_tool_default), allow=self.session_allow)
        return SandboxPolicy(mode=Mode(row.mode), allow=tuple(Rule.parse(e) for e in row.allow))

    async def tool_policy_view(self, tool_id: str) -> dict[str, Any]:
        row = await self._tool_row(tool_id)
        policy = await self.tool_policy(tool_id)
        return {**policy.describe(), "source": "tool" if row is not None else "default"}

    async def set_tool_policy(self, tool_id: str, mode: str, allow: list[str], by: str | None) -> SandboxPolicy:
        """Store an admin's policy for a tool and apply it to the tool's live sandboxes at once."""
        rules = field_rules(allow, "allow")
        policy = SandboxPolicy(mode=Mode(mode), allow=rules)
        async with self.store.sessionmaker() as db:
            row = await db.get(ToolEgressRow, tool_id)
            if row is None:
                row = ToolEgressRow(tool_id=tool_id)
                db.add(row)
            row.mode = policy.mode.value
            row.allow = [r.text for r in rules]
            row.updated_by = by
            row.updated_at = int(time.time())
            await db.commit()
        self._repolicy(f"tool:{tool_id}", policy)
        return policy

    async def forget_tool(self, tool_id: str) -> None:
        """The tool is gone: so is its policy (a new tool of the same id starts from the default)."""
        async with self.store.sessionmaker() as db:
            await db.execute(delete(ToolEgressRow).where(ToolEgressRow.tool_id == tool_id))
            await db.commit()

    async def _tool_row(self, tool_id: str) -> ToolEgressRow | None:
        async with self.store.sessionmaker() as db:
            return (await db.execute(select(ToolEgressRow).where(ToolEgressRow.tool_id == tool_id))).scalar()

    def _repolicy(self, subject: str, policy: SandboxPolicy) -> None:
        for bound in self._bound.values():
            if bound.subject.startswith(subject + "/") or bound.subject == subject:
                bound.proxy.policy = policy

    # -- the check -----------------------------------------------------------------------------------------
    async def check(self, url: str, mode: str | None, allow: list[str] | None) -> tuple[SandboxPolicy, Decision]:
        """What the proxy would decide for ``url`` under a policy, after resolving, without connecting."""
        # urlsplit, not httpx.URL: the proxy judges what a client sends, and httpx refuses some hosts (octal
        # forms) that other clients send as they are; decide() names the rule for those.
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise Invalid("bad_url", f"url cannot be parsed: {exc}", field="url") from None
        if parts.scheme not in ("http", "https") or not host:
            raise Invalid("bad_url", "url must be an absolute http:// or https:// URL", field="url")
        rules = field_rules(allow, "allow") if allow is not None else self.session_allow
        policy = SandboxPolicy(mode=Mode(mode or self.settings.egress_default), allow=rules)
        return policy, await decide(
            policy, host, port or (443 if parts.scheme == "https" else 80), resolve=self.resolve
        )

    # -- proxies -------------------------------------------------------------------------------------------
    def available(self, sandbox: Sandbox) -> bool:
        return getattr(sandbox, "egress_socket", None) is not None

    async def attach(self, sandbox: Sandbox, policy: SandboxPolicy, *, owner: str, subject: str) -> None:
        """Serve the sandbox's proxy socket under ``policy``; a no-op where the backend offers none."""
        path = getattr(sandbox, "egress_socket", None)
        if path is None:
            return
        await self.detach(sandbox.id)

        def record(rec: EgressRecord) -> None:
            self._audit(owner, subject, rec)

        proxy = SandboxProxy(policy, self.limits, record, resolve=self.resolve)
        await proxy.serve(path, owner_uid=sandbox.file_owner)
        self._bound[sandbox.id] = _Bound(proxy, owner, subject)

    async def detach(self, sandbox_id: str) -> None:
        """Close the sandbox's proxy (idempotent): its connections are cut and its socket removed."""
        bound = self._bound.pop(sandbox_id, None)
        if bound is not None:
            try:
                await bound.proxy.aclose()
            except Exception:
                log.exception("egress proxy of sandbox %s did not close cleanly", sandbox_id)

    def describe(self) -> dict[str, Any]:
        """What /readyz shows."""
        return {
            "session_default": self.settings.egress_default,
            "client_max": self.settings.egress_client_max,
            "tool_default": self.settings.egress_tool_default,
            "sandbox_allowlist": [r.text for r in self.session_allow],
            "proxies": len(self._bound),
            "limits": {
                "max_connections": self.limits.max_connections,
                "max_mb_in": self.settings.egress_max_mb_in,
                "max_mb_out": self.settings.egress_max_mb_out,
                "connection_timeout_s": self.limits.connection_timeout_s,
                "idle_timeout_s": self.limits.idle_timeout_s,
            },
        }

    async def aclose(self) -> None:
        for sandbox_id in list(self._bound):
            await self.detach(sandbox_id)
        self.resolve.close()

    def _audit(self, owner: str, subject: str, rec: EgressRecord) -> None:
        if self.audit is None:
            return
        detail: dict[str, Any] = {
            "subject": subject,
            "method": rec.method,
            "host": rec.host,
            "port": rec.port,
            "addresses": list(rec.addresses),
            "decision": "allowed" if rec.allowed else "refused",
            "rule": rec.rule,
            "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
        }
        if rec.cut:
            detail["cut"] = rec.cut
        if rec.error:
            detail["error"] = rec.error
        # Refusals go through the audit's bounded "refused" buffer: a sandbox looping on a refused host
        # cannot flood the store.
        with contextlib.suppress(Exception):
            self.audit.record(
                "egress" if rec.allowed else "refused",
                "egress",
                principal_id=owner,
                target=f"{rec.host}:{rec.port}"[:255],
                status=200 if rec.allowed else 403,
                duration_ms=rec.duration_ms,
                detail=detail,
            )
