"""The end user behind a chat backend's key, from what Open WebUI sends.

Open WebUI names the user three ways, all of which it signs or not as configured on its side:
- ``ENABLE_FORWARD_USER_INFO_HEADERS=true``: plain ``X-OpenWebUI-User-Id/-Name/-Email/-Role`` headers (and
  ``-Chat-Id``, ``-Message-Id``). Anyone holding the key could write these, so they are believed only from a key
  marked ``forward_identity``, and only while no signing secret is configured here.
- ``FORWARD_USER_INFO_HEADER_JWT_SECRET`` on its side: the same facts in one HS256 JWT, ``X-OpenWebUI-User-Jwt``
  (``sub``, ``name``, ``email``, ``role``, ``iss: open-webui``, ``exp``); verified with
  ``EXECUTOR_OPENWEBUI_FORWARD_JWT_SECRET``.
- A connection with ``auth_type: session``: the user's own session token (HS256 with ``WEBUI_SECRET_KEY``,
  claim ``id``) as the bearer; our key then travels in ``X-API-Key``. Verified with
  ``EXECUTOR_OPENWEBUI_SECRET_KEY``.
Once either secret is set, an unsigned ``X-OpenWebUI-User-Id`` is refused: a forged header impersonates nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt

from executor.access.keys import KnownKey
from executor.access.principal import EndUser
from executor.errors import Invalid, Unauthenticated
from executor.settings import Settings

log = logging.getLogger(__name__)

USER_ID = "x-openwebui-user-id"
USER_NAME = "x-openwebui-user-name"
USER_EMAIL = "x-openwebui-user-email"
USER_ROLE = "x-openwebui-user-role"
USER_GROUP_IDS = "x-openwebui-user-group-ids"
USER_JWT = "x-openwebui-user-jwt"
CHAT_ID = "x-openwebui-chat-id"
MESSAGE_ID = "x-openwebui-message-id"
IDENTITY_HEADERS = (USER_ID, USER_NAME, USER_EMAIL, USER_ROLE, USER_GROUP_IDS, USER_JWT)
MAX_ID = 128
MAX_GROUPS = 256


@dataclass(frozen=True)
class Named:
    """What a request says about its end user, once checked."""

    user: EndUser | None
    group_ids: frozenset[str] = frozenset()


def _clean(value: str | None, header: str, *, limit: int = 256) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid("bad_identity_header", f"{header} is longer than {limit} characters or has control characters",
                      field=header)  # fmt: skip
    return value


@dataclass
class IdentityResolver:
    """Reads the end user from a request of a given key. One per app (it remembers whom it warned)."""

    settings: Settings
    _warned: set[str] = field(default_factory=set)

    @property
    def signed_only(self) -> bool:
        return self.settings.openwebui_secret_key is not None or self.settings.openwebui_forward_jwt_secret is not None

    def resolve(self, key: KnownKey, headers: Mapping[str, str], session_token: str | None) -> Named:
        """The end user ``headers`` (or ``session_token``) name; raises Unauthenticated for a bad token."""
        present = [h for h in IDENTITY_HEADERS if headers.get(h)]
        if not key.forward_identity:
            if (present or session_token) and key.id not in self._warned:
                self._warned.add(key.id)
                log.warning(
                    "key %s sent end-user identity (%s) but is not marked forward_identity: ignored "
                    "(logged once per key)",
                    key.id,
                    ", ".join(present) or "a session token",
                )
            return Named(None)
        claims = self._verified(headers, session_token)
        plain_id = _clean(headers.get(USER_ID), "X-OpenWebUI-User-Id", limit=MAX_ID)
        groups = self._groups(headers.get(USER_GROUP_IDS))
        if claims is None:
            if plain_id is None:
                return Named(None, groups)
            if self.signed_only:
                raise Unauthenticated(
                    "unsigned_identity",
                    "this service verifies Open WebUI's signed user token; X-OpenWebUI-User-Id alone is not "
                    "accepted (set FORWARD_USER_INFO_HEADER_JWT_SECRET in Open WebUI, or use auth_type session)",
                    field="X-OpenWebUI-User-Id",
                )
            user = EndUser(
                id=plain_id,
                name=_unquoted(_clean(headers.get(USER_NAME), "X-OpenWebUI-User-Name")),
                email=_clean(headers.get(USER_EMAIL), "X-OpenWebUI-User-Email"),
                role=_clean(headers.get(USER_ROLE), "X-OpenWebUI-User-Role", limit=32),
            )
            return Named(user, groups)
        user_id = _clean(str(claims["id"]), "token subject", limit=MAX_ID)
        assert user_id is not None
        if plain_id is not None and plain_id != user_id:
            raise Unauthenticated(
                "identity_mismatch", "X-OpenWebUI-User-Id names another user than the signed token",
                field="X-OpenWebUI-User-Id",
            )  # fmt: skip
        # The session token carries only the id; the forward token signs name, email and role too.
        signed = "role" in claims
        user = EndUser(
            id=user_id,
            name=str(claims["name"]) if signed and claims.get("name") else _unquoted(headers.get(USER_NAME)),
            email=str(claims["email"]) if signed and claims.get("email") else headers.get(USER_EMAIL),
            role=str(claims["role"]) if signed else None,
            verified=True,
        )
        return Named(user, groups)

    def _verified(self, headers: Mapping[str, str], session_token: str | None) -> dict[str, Any] | None:
        forward = headers.get(USER_JWT)
        if forward:
            secret = self.settings.openwebui_forward_jwt_secret
            if secret is None:
                raise Unauthenticated(
                    "unverifiable_token",
                    "X-OpenWebUI-User-Jwt was sent but EXECUTOR_OPENWEBUI_FORWARD_JWT_SECRET is not set here",
                    field="X-OpenWebUI-User-Jwt",
                )
            claims = _decode(forward, secret.get_secret_value(), "X-OpenWebUI-User-Jwt", issuer="open-webui")
            return {**claims, "id": claims["sub"]}
        if session_token:
            secret = self.settings.openwebui_secret_key
            if secret is None:
                raise Unauthenticated(
                    "unverifiable_token",
                    "a bearer token was sent beside X-API-Key but EXECUTOR_OPENWEBUI_SECRET_KEY is not set here",
                    field="Authorization",
                )
            return _decode(session_token, secret.get_secret_value(), "Authorization", claim="id")
        return None

    @staticmethod
    def _groups(raw: str | None) -> frozenset[str]:
        if not raw:
            return frozenset()
        ids = [unquote(g).strip() for g in raw.split(",")]
        ids = [g for g in ids if g]
        if len(ids) > MAX_GROUPS or any(len(g) > MAX_ID for g in ids):
            raise Invalid(
                "bad_identity_header", f"X-OpenWebUI-User-Group-Ids: at most {MAX_GROUPS} ids of {MAX_ID} characters",
                field="X-OpenWebUI-User-Group-Ids",
            )  # fmt: skip
        return frozenset(ids)


def _unquoted(value: str | None) -> str | None:
    # Open WebUI percent-encodes the name header (quote(name, safe=' ')) so non-ASCII names survive HTTP.
    return unquote(value) if value else None


def _decode(token: str, secret: str, where: str, *, claim: str = "sub", issuer: str | None = None) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],  # pinned: a token may not pick its own algorithm ("none", RS/HS confusion)
            issuer=issuer,
            options={"require": ["exp", claim] if issuer else [claim]},
        )
    except jwt.PyJWTError as exc:
        raise Unauthenticated(
            "invalid_token", f"{where}: not a valid Open WebUI user token ({type(exc).__name__}: {exc})", field=where
        ) from None
    if not isinstance(claims.get(claim), str | int) or str(claims[claim]) == "":
        raise Unauthenticated("invalid_token", f"{where}: the token names no user ({claim!r})", field=where)
    return claims
