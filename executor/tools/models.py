"""The tool registry's tables and API models.

The API models mirror Open WebUI 0.12.4's (``open_webui/models/tools.py``: ``ToolForm``, ``ToolMeta``,
``ToolModel``, ``ToolResponse``, ``ToolUserResponse``, ``ToolAccessResponse``) so its clients and exports work
unchanged; each adds ``restricted`` and the build ``status`` of the tool's requirements. Times are epoch
seconds, as there. ``access_grants`` are the Access issue's grants (``principal_type``, ``principal_id``,
``permission``); the older ``access_control`` dict is accepted and converted (``executor.access.grants.migrate``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator
from sqlalchemy import JSON, BigInteger, Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.grants import AccessGrant, migrate, normalized
from executor.store import Base

BuildStatus = Literal["ready", "building", "failed"]
MAX_GRANTS = 1000


class ToolRow(Base):
    """One tool module. ``valves`` holds secrets in clear: it is only ever returned masked."""

    __tablename__ = "tools"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)  # the owner principal id
    name: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    specs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    access_grants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    valves: Mapped[dict[str, Any]] = mapped_column(JSON)
    valves_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    user_valves_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    requirements: Mapped[list[str]] = mapped_column(JSON)
    # The requirements layer's build (executor/tools/requirements.py): ready, building or failed, and why.
    status: Mapped[str] = mapped_column(String(16), default="ready")
    status_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class UserValvesRow(Base):
    """One end user's user valves of one tool (Open WebUI keeps them in the user's settings)."""

    __tablename__ = "tool_user_valves"

    tool_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    valves: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class ToolMeta(BaseModel):
    """Open WebUI's ``ToolMeta``: ``manifest`` is the file's frontmatter (set by the service, not the client)."""

    model_config = ConfigDict(extra="allow")
    i18n: dict[str, dict[str, str]] | None = None
    description: str | None = None
    manifest: dict[str, Any] | None = Field(default_factory=dict)
    has_user_valves: bool = False


def _grants(data: Any) -> Any:
    # The older access_control dict (Open WebUI exports before 0.7) becomes grants; null grants mean none.
    data = migrate(data)
    if isinstance(data, dict) and data.get("access_grants") is None and "access_grants" in data:
        data = {k: v for k, v in data.items() if k != "access_grants"}
    return data


class ToolForm(BaseModel):
    """Open WebUI's ``ToolForm`` (create and update), plus ``restricted``."""

    commit_message: str | None = Field(None, max_length=4096)
    id: str = Field(..., max_length=128)
    name: str = Field(..., max_length=512)
    content: str
    meta: ToolMeta = Field(default_factory=ToolMeta)
    access_grants: list[AccessGrant] | None = Field(
        None, max_length=MAX_GRANTS, description="Who may read (list, call) and write it; none: owner and admins."
    )
    restricted: bool | None = Field(
        None,
        description="Run it under RestrictedPython inside its sandbox (admins only; none: keep, or the "
        "service's default for non-admins).",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _grants(data)

    @field_validator("access_grants")
    @classmethod
    def _dedupe(cls, grants: list[AccessGrant] | None) -> list[AccessGrant] | None:
        return None if grants is None else normalized(grants)


class ToolAccessGrantsForm(BaseModel):
    """Open WebUI's ``ToolAccessGrantsForm`` (``POST /id/{id}/access/update``)."""

    access_grants: list[AccessGrant] = Field(default_factory=list, max_length=MAX_GRANTS)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _grants(data)

    @field_validator("access_grants")
    @classmethod
    def _dedupe(cls, grants: list[AccessGrant]) -> list[AccessGrant]:
        return normalized(grants)


class ToolResponse(BaseModel):
    """Open WebUI's ``ToolResponse`` (what create returns): no content, no specs."""

    version_id: str | None = None
    id: str
    user_id: str | None = None
    name: str
    meta: ToolMeta
    access_grants: list[AccessGrant] = Field(default_factory=list)
    updated_at: int
    created_at: int
    restricted: bool = False
    status: BuildStatus = "ready"
    status_detail: str | None = None


class ToolModel(ToolResponse):
    """Open WebUI's ``ToolModel`` (what update returns): with content and specs."""

    content: str | None = None
    specs: list[dict[str, Any]] = Field(default_factory=list)


class ToolUserResponse(ToolResponse):
    """Open WebUI's ``ToolUserResponse`` (an item of ``GET /tools/``). Its ``extra="allow"`` lets the listing
    carry ``specs``, ``content`` (null: listings skip the source) and ``has_user_valves``, as there."""

    model_config = ConfigDict(extra="allow")
    user: dict[str, Any] | None = None


class ToolAccessResponse(ToolUserResponse):
    """Open WebUI's ``ToolAccessResponse`` (``GET /tools/id/{id}``, ``/tools/list``): the source only for writers."""

    write_access: bool | None = False


class LoadUrlForm(BaseModel):
    """Open WebUI's ``LoadUrlForm``."""

    url: HttpUrl


class LoadedTool(BaseModel):
    """What ``POST /tools/load/url`` returns: a name guessed from the URL, and the file."""

    name: str
    content: str
