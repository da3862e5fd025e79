"""Tool-server connections: the Open WebUI ``TOOL_SERVER_CONNECTIONS`` entry, validated, and its table."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import JSON, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.grants import AccessGrant, migrate, normalized
from executor.errors import Invalid
from executor.store import Base

MASK = "********"
ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
SECRET_HEADER_RE = re.compile(r"auth|token|key|secret|cookie|password|session", re.IGNORECASE)
AuthType = Literal["none", "bearer", "session", "system_oauth", "oauth_2.1", "oauth_2.1_static"]


class ConnectionConfig(BaseModel):
    """Open WebUI 0.12's ``config``: ``access_grants`` (none or empty: admins only), the function filter."""

    model_config = ConfigDict(extra="allow")
    enable: bool = True
    access_grants: list[AccessGrant] = Field(
        default_factory=list, max_length=1000, description="Who may list and call it; none or empty: admins only."
    )
    function_name_filter_list: str | list[str] = Field(
        "", description="Open WebUI's filter: comma-separated names to offer; '!name' hides one."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # The older access_control dict arrives from Open WebUI exports and old env files: convert it once.
        data = migrate(data)
        if isinstance(data, dict):
            # Open WebUI writes null for "not set" here; so do its exports.
            data = {
                k: v for k, v in data.items() if not (k in ("access_grants", "function_name_filter_list") and v is None)
            }
        return data

    @field_validator("access_grants")
    @classmethod
    def _dedupe(cls, grants: list[AccessGrant]) -> list[AccessGrant]:
        return normalized(grants)


class ConnectionInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    name: str | None = None
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and value != "" and not ID_RE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '-' or '.'")
        return value or None


class Connection(BaseModel):
    """One tool server, as Open WebUI stores it (unknown fields are kept for round trips)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["openapi", "mcp"] = "openapi"
    url: str = ""
    path: str = "openapi.json"
    spec_type: Literal["url", "json"] = "url"
    spec: str | dict[str, Any] | None = Field("", description="The spec itself, when spec_type is 'json'.")
    auth_type: AuthType = "bearer"
    key: str = ""
    headers: dict[str, str] | None = None
    config: ConnectionConfig = Field(default_factory=ConnectionConfig)

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: Any) -> Any:
        return {} if value is None else value

    info: ConnectionInfo = Field(default_factory=ConnectionInfo)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use 'key' or 'headers'")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, header in (value or {}).items():
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if any(c in header for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains CR, LF or NUL")
        return value

    @model_validator(mode="after")
    def _needs(self) -> Connection:
        if self.type == "openapi":
            if self.spec_type == "url" and not self.url and "://" not in self.path:
                raise ValueError("'url' is required when spec_type is 'url'")
            if self.spec_type == "json" and not self.spec:
                raise ValueError("'spec' is required when spec_type is 'json'")
        return self

    def masked(self) -> dict[str, Any]:
        """The connection as shown to clients: keys and secret-looking header values replaced."""
        data = self.model_dump(mode="json")
        if data.get("key"):
            data["key"] = MASK
        if data.get("headers"):
            data["headers"] = {k: (MASK if SECRET_HEADER_RE.search(k) and v else v) for k, v in data["headers"].items()}
        return data


def server_id(conn: Connection, index: int) -> str:
    """The id Open WebUI gives a connection: ``info.id``, else its position in the list."""
    return conn.info.id or str(index)


# A saved secret is given back for the mask only while the request it would be sent with stays the same.
SECRET_BOUND_FIELDS = ("url", "path", "spec_type", "auth_type")


def unmask(
    new: list[Connection], old: list[Connection], *, prefix: str = "TOOL_SERVER_CONNECTIONS"
) -> list[Connection]:
    """Put back secrets a client echoed as the mask, from the saved connection with the same id.

    Only when ``url``, ``path``, ``spec_type`` and ``auth_type`` are all unchanged: otherwise the mask could
    carry a saved key to a place the admin never sent it, so :class:`Invalid` names the field to enter again.
    """
    previous = {server_id(c, i): c for i, c in enumerate(old)}
    out: list[Connection] = []
    for i, conn in enumerate(new):
        where = f"{prefix}[{i}]" if prefix else ""
        masked_headers = [k for k, v in (conn.headers or {}).items() if v == MASK]
        if conn.key != MASK and not masked_headers:
            out.append(conn)
            continue
        prior = previous.get(server_id(conn, i))
        first = f"{where}.key" if conn.key == MASK else f"{where}.headers.{masked_headers[0]}"
        first = first.lstrip(".")
        if prior is None:
            raise Invalid("secret_required", f"{first} is the mask, but no saved connection has this id: enter it",
                          field=first)  # fmt: skip
        changed = [f for f in SECRET_BOUND_FIELDS if getattr(conn, f) != getattr(prior, f)]
        if changed:
            raise Invalid(
                "secret_required",
                f"{', '.join(changed)} changed, so the saved secret is not reused: enter {first} again",
                field=first,
            )
        update: dict[str, Any] = {}
        if conn.key == MASK:
            update["key"] = prior.key
        if masked_headers:
            missing = [k for k in masked_headers if k not in (prior.headers or {})]
            if missing:
                field = f"{where}.headers.{missing[0]}".lstrip(".")
                raise Invalid("secret_required", f"{field} is the mask but was never saved: enter it", field=field)
            assert conn.headers is not None and prior.headers is not None
            update["headers"] = {k: (prior.headers[k] if v == MASK else v) for k, v in conn.headers.items()}
        out.append(conn.model_copy(update=update))
    return out


class ToolServerConfigRow(Base):
    """The saved connection list (one row); absent until a client saves one."""

    __tablename__ = "tool_server_config"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
