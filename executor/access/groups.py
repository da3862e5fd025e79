"""Groups of end users, in Open WebUI's shape (id, name, description, user_ids), for ``group`` access grants.

Kept in memory (a few hundred groups at most) and written through to the store, so a lookup per request
costs no query. An admin may give a group Open WebUI's own id, so grants copied from Open WebUI keep working.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy import JSON, DateTime, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.stamp import ChangeStamp
from executor.errors import Conflict, Invalid, NotFound
from executor.store import Base, Store

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_MEMBERS = 10_000


class GroupRow(Base):
    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    user_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GroupForm(BaseModel):
    """Create or replace a group. ``id`` is optional on create (a UUID is made)."""

    id: str | None = Field(None, description="Give Open WebUI's group id to keep its grants meaningful here.")
    name: str = Field(..., min_length=1, max_length=255)
    description: str = Field("", max_length=4096)
    user_ids: list[str] = Field(default_factory=list, max_length=MAX_MEMBERS)


class Group(BaseModel):
    id: str
    name: str
    description: str
    user_ids: list[str]
    created_at: datetime
    updated_at: datetime


def _check(form: GroupForm) -> None:
    for i, uid in enumerate(form.user_ids):
        if not uid or len(uid) > 128:
            raise Invalid("bad_user_id", "user ids are 1-128 characters", field=f"user_ids[{i}]")


class GroupStore:
    """The groups; ``load`` once the tables exist."""

    def __init__(self, store: Store, stamp: ChangeStamp) -> None:
        self.store = store
        self.stamp = stamp
        self.groups: dict[str, Group] = {}
        self._members: dict[str, frozenset[str]] = {}

    async def load(self) -> None:
        async with self.store.sessionmaker() as db:
            rows = list(await db.scalars(select(GroupRow).order_by(GroupRow.created_at)))
        self.groups = {r.id: _model(r) for r in rows}
        self._index()

    def _index(self) -> None:
        members: dict[str, set[str]] = {}
        for g in self.groups.values():
            for uid in g.user_ids:
                members.setdefault(uid, set()).add(g.id)
        self._members = {uid: frozenset(ids) for uid, ids in members.items()}

    def of(self, user_id: str) -> frozenset[str]:
        """Ids of the groups ``user_id`` is a member of."""
        return self._members.get(user_id, frozenset())

    def get(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            raise NotFound("group_not_found", f"group {group_id!r} does not exist")
        return group

    async def create(self, form: GroupForm) -> Group:
        _check(form)
        gid = form.id or str(uuid.uuid4())
        if not ID_RE.match(gid):
            raise Invalid("bad_id", "a group id is 1-128 letters, digits, '.', '_', ':', '@' or '-'", field="id")
        if gid in self.groups:
            raise Conflict("group_exists", f"group {gid!r} exists", field="id")
        now = datetime.now(UTC)
        row = GroupRow(
            id=gid,
            name=form.name,
            description=form.description,
            user_ids=list(dict.fromkeys(form.user_ids)),
            created_at=now,
            updated_at=now,
        )
        async with self.store.sessionmaker() as db, db.begin():
            db.add(row)
        self.groups[gid] = _model(row)
        self._index()
        self.stamp.touch()
        return self.groups[gid]

    async def update(self, group_id: str, form: GroupForm) -> Group:
        current = self.get(group_id)
        _check(form)
        if form.id is not None and form.id != group_id:
            raise Invalid("id_mismatch", "a group's id cannot change", field="id")
        async with self.store.sessionmaker() as db, db.begin():
            row = await db.get(GroupRow, group_id)
            if row is None:
                raise NotFound("group_not_found", f"group {group_id!r} does not exist")
            row.name = form.name
            row.description = form.description
            row.user_ids = list(dict.fromkeys(form.user_ids))
            row.updated_at = datetime.now(UTC)
        self.groups[group_id] = _model(row).model_copy(update={"created_at": current.created_at})
        self._index()
        self.stamp.touch()
        return self.groups[group_id]

    async def delete(self, group_id: str) -> None:
        self.get(group_id)
        async with self.store.sessionmaker() as db, db.begin():
            await db.execute(delete(GroupRow).where(GroupRow.id == group_id))
        del self.groups[group_id]
        self._index()
        self.stamp.touch()


def _model(row: GroupRow) -> Group:
    return Group(
        id=row.id,
        name=row.name,
        description=row.description or "",
        user_ids=list(row.user_ids or []),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
