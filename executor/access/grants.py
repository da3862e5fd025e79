"""Access grants as Open WebUI 0.12 has them, and the older ``access_control`` dict they replace.

A resource carries ``access_grants``: ``[{principal_type: user|group, principal_id, permission: read|write}]``;
``principal_id: "*"`` with type ``user`` is every user. None or an empty list means admins only (Open WebUI's
``has_connection_access``). The older ``access_control`` is converted on input the way Open WebUI's
``access_control_to_grants`` does: ``None`` is public read, ``{}`` is owner (here: admin) only, and
``{read|write: {user_ids, group_ids}}`` becomes one grant each.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from executor.access.principal import Principal

Permission = Literal["read", "write"]
WILDCARD = "*"


class AccessGrant(BaseModel):
    model_config = ConfigDict(extra="ignore")

    principal_type: Literal["user", "group"]
    principal_id: str = Field(..., min_length=1, max_length=128)
    permission: Permission = "read"


PUBLIC_READ = AccessGrant(principal_type="user", principal_id=WILDCARD, permission="read")


def from_access_control(access_control: dict[str, Any] | None) -> list[AccessGrant]:
    """Open WebUI's conversion of the legacy dict: None public read, {} nobody, else one grant per id."""
    if access_control is None:
        return [PUBLIC_READ]
    grants: list[AccessGrant] = []
    for permission in ("read", "write"):
        rule = access_control.get(permission) or {}
        if not isinstance(rule, dict):
            continue
        for kind, key in (("group", "group_ids"), ("user", "user_ids")):
            for ident in rule.get(key) or []:
                if isinstance(ident, str) and ident:
                    grants.append(AccessGrant(principal_type=kind, principal_id=ident, permission=permission))
    return grants


def migrate(data: Any) -> Any:
    """For a ``before`` validator: a dict with ``access_control`` and no ``access_grants`` gets converted grants."""
    if isinstance(data, dict) and "access_control" in data and "access_grants" not in data:
        legacy = data["access_control"]
        rest = {k: v for k, v in data.items() if k != "access_control"}
        if legacy is not None and not isinstance(legacy, dict):
            raise ValueError("access_control must be null or an object")
        return {**rest, "access_grants": [g.model_dump() for g in from_access_control(legacy)]}
    return data


def normalized(grants: list[AccessGrant] | None) -> list[AccessGrant]:
    """Duplicates removed, order kept."""
    seen: dict[tuple[str, str, str], AccessGrant] = {}
    for g in grants or []:
        seen.setdefault((g.principal_type, g.principal_id, g.permission), g)
    return list(seen.values())


def has_access(principal: Principal, grants: list[AccessGrant] | None, permission: Permission = "read") -> bool:
    """Whether ``principal`` may ``permission`` a resource with these grants. Admins always may."""
    if principal.is_admin:
        return True
    for g in grants or []:
        if g.permission != permission:
            continue
        if g.principal_type == "user" and g.principal_id in (WILDCARD, principal.user_id):
            return True
        if g.principal_type == "group" and g.principal_id in principal.group_ids:
            return True
    return False
