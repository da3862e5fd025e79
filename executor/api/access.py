"""Admin routes of access: API keys, groups (Open WebUI's shape) and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel

from executor.access.audit import AuditEntry, Kind
from executor.access.groups import Group, GroupForm
from executor.access.keys import KeyCreate, KeyInfo, NewKey
from executor.access.principal import EndUser, Role
from executor.access.service import Access
from executor.api.deps import AdminPrincipal, CurrentPrincipal, get_access

router = APIRouter(prefix="/api/v1", tags=["access"])
AccessDep = Annotated[Access, Depends(get_access)]
Name = Annotated[str, Path(max_length=128)]


class Me(BaseModel):
    """Who the service takes the caller to be: check a chat backend's identity forwarding with this."""

    id: str
    key_id: str
    key_name: str
    role: Role
    forward_identity: bool
    may_create_tools: bool
    end_user: EndUser | None
    group_ids: list[str]


@router.get("/me", response_model=Me)
async def me(principal: CurrentPrincipal) -> Me:
    return Me(
        id=principal.id,
        key_id=principal.key_id,
        key_name=principal.key_name,
        role=principal.role,
        forward_identity=principal.forward_identity,
        may_create_tools=principal.can_create_tools,
        end_user=principal.end_user,
        group_ids=sorted(principal.group_ids),
    )


# -- keys -----------------------------------------------------------------------------------------------


@router.get("/keys", response_model=list[KeyInfo])
async def list_keys(
    admin: AdminPrincipal, access: AccessDep, revoked: Annotated[bool, Query(description="include revoked")] = False
) -> list[KeyInfo]:
    """Every key by id, name, role and source; never a key's value."""
    return [*access.ring.listing(), *await access.keys.list(include_revoked=revoked)]


@router.post("/keys", status_code=201, response_model=NewKey)
async def create_key(form: KeyCreate, admin: AdminPrincipal, access: AccessDep) -> NewKey:
    """Make a key. Its value is in this response only; the service keeps its hash."""
    made = await access.keys.create(form)
    access.audit.record(
        "admin", "key.create", principal=admin, target=made.id,
        detail={"name": made.name, "role": made.role, "forward_identity": made.forward_identity,
                "may_create_tools": made.may_create_tools},
    )  # fmt: skip
    return made


@router.delete("/keys/{name}", response_model=KeyInfo)
async def revoke_key(name: Name, admin: AdminPrincipal, access: AccessDep) -> KeyInfo:
    """Revoke a stored key by name or id; refused from the next request on."""
    revoked = await access.keys.revoke(name)
    access.audit.record("admin", "key.revoke", principal=admin, target=revoked.id, detail={"name": revoked.name})
    return revoked


# -- groups ---------------------------------------------------------------------------------------------


@router.get("/groups", response_model=list[Group])
async def list_groups(admin: AdminPrincipal, access: AccessDep) -> list[Group]:
    return list(access.groups.groups.values())


@router.post("/groups", status_code=201, response_model=Group)
async def create_group(form: GroupForm, admin: AdminPrincipal, access: AccessDep) -> Group:
    """A group of end-user ids (give Open WebUI's group id to reuse its grants)."""
    group = await access.groups.create(form)
    access.audit.record(
        "admin", "group.create", principal=admin, target=group.id, detail={"members": len(group.user_ids)}
    )
    return group


@router.get("/groups/{group_id}", response_model=Group)
async def get_group(group_id: Name, admin: AdminPrincipal, access: AccessDep) -> Group:
    return access.groups.get(group_id)


@router.put("/groups/{group_id}", response_model=Group)
async def update_group(group_id: Name, form: GroupForm, admin: AdminPrincipal, access: AccessDep) -> Group:
    """Replace a group's name, description and members."""
    group = await access.groups.update(group_id, form)
    access.audit.record(
        "admin", "group.update", principal=admin, target=group.id, detail={"members": len(group.user_ids)}
    )
    return group


@router.delete("/groups/{group_id}", status_code=204)
async def delete_group(group_id: Name, admin: AdminPrincipal, access: AccessDep) -> Response:
    await access.groups.delete(group_id)
    access.audit.record("admin", "group.delete", principal=admin, target=group_id)
    return Response(status_code=204)


# -- audit ----------------------------------------------------------------------------------------------


@router.get("/audit", response_model=list[AuditEntry])
async def read_audit(
    admin: AdminPrincipal,
    access: AccessDep,
    principal: Annotated[str | None, Query(max_length=200, description="a principal id, or a key id")] = None,
    kind: Annotated[Kind | None, Query(description="admin, refused, tool_call or egress")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; entries at or after")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; entries before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    """Newest first: admin changes, refused requests (401/403) and tool-server calls."""
    return await access.audit.query(principal=principal, kind=kind, since=since, until=until, limit=limit)
