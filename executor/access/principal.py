"""The caller of a request: an API key (with its role), and the end user a trusted chat backend named."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "user"]


class EndUser(BaseModel):
    """The person behind a chat backend's key, as that backend named them (or as its signed token says)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str | None = None
    email: str | None = None
    role: str | None = Field(None, description="The role the chat backend gives them (Open WebUI: admin, user).")
    verified: bool = Field(False, description="Named by a signed token rather than by plain headers.")


class Principal(BaseModel):
    """Who is calling. ``id`` is stable, never holds a secret, and is what owns sessions and files."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    key_name: str
    role: Role
    forward_identity: bool = False
    end_user: EndUser | None = None
    group_ids: frozenset[str] = frozenset()
    may_create_tools: bool = Field(False, description="The key was allowed to register tool modules.")

    @property
    def id(self) -> str:
        # Key ids never contain "/", so the owner string splits back unambiguously.
        return self.key_id if self.end_user is None else f"{self.key_id}/{self.end_user.id}"

    @property
    def user_id(self) -> str:
        """The id access grants of type ``user`` match: the end user's, else the key's own."""
        return self.end_user.id if self.end_user is not None else self.key_id

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_create_tools(self) -> bool:
        """Admins, and callers whose key the admin allowed to register tools (Open WebUI's workspace.tools)."""
        return self.is_admin or self.may_create_tools


def key_of(owner: str) -> str:
    """The key id part of an owner string (``key-…`` or ``key-…/end-user``)."""
    return owner.partition("/")[0]


# With no keys configured (loopback only) the one caller is trusted like an admin key that forwards identity.
ANONYMOUS = Principal(key_id="anonymous", key_name="anonymous", role="admin", forward_identity=True)
