"""Access: turns a request's credentials into a Principal, and holds the keys, groups and audit log.

Keys and groups are answered from memory. Whoever writes either table (the admin API here, or the
``executor keys`` CLI in another process) touches a stamp file in the data dir; each request costs one ``stat``
of it, and a changed stamp reloads both tables, so a revoked key is refused from the next request on.
Replicas on other hosts sharing one database see changes within ``EXECUTOR_KEY_CACHE_TTL_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from executor.access.audit import AuditLog
from executor.access.groups import GroupStore
from executor.access.identity import IdentityResolver
from executor.access.keys import KeyRing, KeyStore, KnownKey
from executor.access.principal import ANONYMOUS, Principal
from executor.errors import Unauthenticated
from executor.settings import Settings
from executor.store import Store

ANONYMOUS_KEY = KnownKey(ANONYMOUS.key_id, ANONYMOUS.key_name, ANONYMOUS.role, ANONYMOUS.forward_identity)


class Access:
    """One per app: ``start`` after the tables exist, ``close`` on shutdown."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.keys = KeyStore(settings, store)
        self.ring = KeyRing(settings, self.keys)
        self.groups = GroupStore(store, self.keys.stamp)
        self.identity = IdentityResolver(settings)
        self.audit = AuditLog(store, retention_days=settings.audit_retention_days)
        self._stamp: int | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.reload()
        await self.audit.start()

    async def close(self) -> None:
        await self.audit.close()

    async def reload(self) -> None:
        async with self._lock:
            stamp = self.keys.stamp.read()
            await self.ring.load()
            await self.groups.load()
            self._stamp = stamp
            self._loaded_at = time.monotonic()

    async def refresh(self) -> None:
        stale = time.monotonic() - self._loaded_at > self.settings.key_cache_ttl_s
        if stale or self.keys.stamp.read() != self._stamp:
            await self.reload()

    async def key(self, presented: str | None) -> KnownKey | None:
        """The key presented, None when auth is off (the anonymous admin); raises Unauthenticated otherwise."""
        await self.refresh()
        if not self.ring.auth_enabled:
            return None
        if not presented:
            raise Unauthenticated(
                "unauthorized", "missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')"
            )
        found = self.ring.find(presented)
        if found is None:
            raise Unauthenticated("unauthorized", "invalid or revoked API key")
        return found

    def principal(self, key: KnownKey | None, headers: Mapping[str, str], session_token: str | None) -> Principal:
        """The principal of a request made with ``key`` (None: the anonymous admin of a keyless service): the
        key itself, or (key, the end user it names)."""
        if key is None:
            key = ANONYMOUS_KEY
        named = self.identity.resolve(key, headers, session_token)
        user = named.user
        role = key.role
        if user is not None and not (key.role == "admin" and user.role == "admin"):
            # An end user is an admin here only if an admin key vouches for an admin of the chat backend.
            role = "user"
        own = self.groups.of(user.id if user is not None else key.id)
        return Principal(
            key_id=key.id,
            key_name=key.name,
            role=role,
            forward_identity=key.forward_identity,
            end_user=user,
            group_ids=named.group_ids | own,
            may_create_tools=key.may_create_tools,
        )
