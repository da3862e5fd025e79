"""API keys with roles: the ones in the environment, and the ones created at run time (stored hashed).

A stored key is kept only as its SHA-256 (keys are 256 random bits, so a fast hash is enough: nothing to
brute-force); the key itself is shown once, when it is made. ``KeyRing`` answers "which key is this?" from
memory; ``executor.access.service`` reloads it when the table changed (see there).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy import Boolean, DateTime, String, select
from sqlalchemy.orm import Mapped, mapped_column

from executor.access.principal import Role
from executor.access.stamp import ChangeStamp
from executor.errors import Conflict, Invalid, NotFound
from executor.settings import Settings
from executor.store import Base, Store

KEY_PREFIX = "exk_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """The stable, non-secret id of a key: what principals, records and logs name it by."""
    return "key-" + key_hash(key)[:16]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    forward_identity: Mapped[bool] = mapped_column(Boolean, default=False)
    # Added after the first release (store._ADDED_COLUMNS): NULL in older rows, read as False.
    may_create_tools: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=False)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KeyInfo(BaseModel):
    """A key as listed: never its value."""

    id: str
    name: str
    role: Role
    forward_identity: bool
    may_create_tools: bool = False
    source: str = Field(description="'env' (set in the environment) or 'stored' (created with the CLI or API).")
    created_at: datetime | None = None
    revoked_at: datetime | None = None


class NewKey(KeyInfo):
    key: str = Field(description="The key itself. Shown this once; only its hash is kept.")


class KeyCreate(BaseModel):
    name: str = Field(..., description="A unique name, 1-64 letters, digits, '.', '_' or '-'.")
    role: Role = "user"
    forward_identity: bool = Field(
        False, description="May name the end user behind it (Open WebUI's forwarded user headers or tokens)."
    )
    may_create_tools: bool = Field(
        False,
        description="A user key that may register tool modules (admin keys always may); its end users may too, "
        "like Open WebUI's workspace.tools permission.",
    )


@dataclass(frozen=True)
class KnownKey:
    id: str
    name: str
    role: Role
    forward_identity: bool
    may_create_tools: bool = False


def env_keys(settings: Settings) -> dict[str, KnownKey]:
    """The keys set in the environment, by hash."""
    out: dict[str, KnownKey] = {}
    trusted = set(settings.forward_identity_api_keys)
    groups: list[tuple[Role, list[str]]] = [
        ("user", [*settings.api_keys, *settings.forward_identity_api_keys]),
        ("admin", settings.admin_api_keys),
    ]
    for role, keys in groups:
        for key in keys:
            kid = key_id(key)
            out[key_hash(key)] = KnownKey(kid, kid, role, key in trusted)
    return out


class KeyStore:
    """The stored keys' table. Shared by the service (admin API) and the ``executor keys`` CLI."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.stamp = ChangeStamp(settings.data_dir / "access.stamp")

    async def create(self, form: KeyCreate) -> NewKey:
        if not NAME_RE.match(form.name):
            raise Invalid("bad_name", "name must be 1-64 letters, digits, '.', '_' or '-'", field="name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        async with self.store.sessionmaker() as db, db.begin():
            taken = await db.scalar(
                select(ApiKeyRow.id).where(ApiKeyRow.name == form.name, ApiKeyRow.revoked_at.is_(None))
            )
            if taken is not None:
                raise Conflict("name_taken", f"a key named {form.name!r} exists; revoke it first", field="name")
            row = ApiKeyRow(
                id=key_id(key),
                name=form.name,
                role=form.role,
                forward_identity=form.forward_identity,
                may_create_tools=form.may_create_tools,
                hash=key_hash(key),
                created_at=now,
            )
            db.add(row)
        self.stamp.touch()
        return NewKey(key=key, **_info(row).model_dump())

    async def list(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        async with self.store.sessionmaker() as db:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            return [_info(r) for r in await db.scalars(query)]

    async def revoke(self, name_or_id: str) -> KeyInfo:
        async with self.store.sessionmaker() as db, db.begin():
            row = await db.scalar(
                select(ApiKeyRow).where(
                    (ApiKeyRow.name == name_or_id) | (ApiKeyRow.id == name_or_id), ApiKeyRow.revoked_at.is_(None)
                )
            )
            if row is None:
                if any(k.id == name_or_id for k in env_keys(self.settings).values()):
                    raise Conflict(
                        "key_in_environment",
                        f"key {name_or_id!r} is set in the environment: remove it from EXECUTOR_*API_KEYS and restart",
                    )
                raise NotFound("key_not_found", f"no live key is named {name_or_id!r}")
            row.revoked_at = datetime.now(UTC)
        self.stamp.touch()
        return _info(row)

    async def active(self) -> tuple[dict[str, KnownKey], bool]:
        """Live stored keys by hash, and whether any key was ever stored (revoked ones included)."""
        async with self.store.sessionmaker() as db:
            rows = list(await db.scalars(select(ApiKeyRow)))
        live = {
            r.hash: KnownKey(r.id, r.name, r.role, r.forward_identity, bool(r.may_create_tools))  # type: ignore[arg-type]
            for r in rows
            if r.revoked_at is None
        }
        return live, bool(rows)


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        role=row.role,
        forward_identity=row.forward_identity,
        may_create_tools=bool(row.may_create_tools),
        source="stored",
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class KeyRing:
    """The keys a request may present: the environment's and the live stored ones, in memory."""

    def __init__(self, settings: Settings, keys: KeyStore) -> None:
        self.keys = keys
        self.env = env_keys(settings)
        self.stored: dict[str, KnownKey] = {}
        self.ever_stored = False

    @property
    def auth_enabled(self) -> bool:
        """False only while no key was ever configured: then the single anonymous caller is an admin."""
        return bool(self.env) or self.ever_stored

    async def load(self) -> None:
        self.stored, self.ever_stored = await self.keys.active()

    def find(self, presented: str) -> KnownKey | None:
        """The key ``presented`` is, or None."""
        # Looked up by hash: a timing difference could only reveal bits of a hash, never of a key.
        digest = key_hash(presented)
        return self.env.get(digest) or self.stored.get(digest)

    def listing(self) -> list[KeyInfo]:
        """The environment's keys, as the admin API shows them."""
        return env_listing(self.env)


def env_listing(env: dict[str, KnownKey]) -> list[KeyInfo]:
    """Keys set in the environment, as ``executor keys list`` and the admin API show them."""
    return [
        KeyInfo(id=k.id, name=k.name, role=k.role, forward_identity=k.forward_identity, source="env")
        for k in env.values()
    ]
