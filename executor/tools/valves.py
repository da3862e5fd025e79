"""Valves and user valves as the service keeps them: which fields are secret, masking, and the masked post-back.

A field is secret when the stored JSON schema of its model says so (pydantic's ``SecretStr``: ``format:
password`` / ``writeOnly``, also inside ``anyOf`` for ``Optional[SecretStr]``; ``json_schema_extra={"secret":
True}``), or when its name contains ``password``, ``secret``, ``key`` or ``token`` (any case): values stored for
a field the current schema no longer has are judged by name alone. Secrets are write-only, as tool-server keys
are (``executor.openapi.models``): every response shows the same mask, and a mask posted back keeps the stored
value (or, with none stored, leaves the field unset so its default applies). Validation itself runs in the
tool's sandbox (``ToolRuntime.validate_valves``); this module never sees a model class.
"""

from __future__ import annotations

import re
from typing import Any

from executor.openapi.models import MASK

# What pydantic itself shows for a SecretStr (a default in a schema, or str() of one): posted back, it too means
# "keep what is stored", never a new secret of ten asterisks.
PYDANTIC_MASK = "**********"
MASKS = frozenset({MASK, PYDANTIC_MASK})
SECRET_NAME_RE = re.compile(r"password|secret|key|token", re.IGNORECASE)


def _secret_schema(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    if prop.get("secret") is True or prop.get("writeOnly") is True or prop.get("format") == "password":
        return True
    return any(_secret_schema(p) for k in ("anyOf", "oneOf", "allOf") for p in prop.get(k) or [])


def secret_fields(schema: dict[str, Any] | None) -> frozenset[str]:
    """Names of the top-level fields of ``schema`` that are secret (by schema or by name)."""
    props = (schema or {}).get("properties") or {}
    if not isinstance(props, dict):
        return frozenset()
    return frozenset(name for name, prop in props.items() if SECRET_NAME_RE.search(name) or _secret_schema(prop))


def is_secret(name: str, schema: dict[str, Any] | None) -> bool:
    """Whether the field ``name`` is secret under ``schema`` (or by its name, whatever the schema says)."""
    return bool(SECRET_NAME_RE.search(name)) or name in secret_fields(schema)


def masked(values: dict[str, Any] | None, schema: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` as a response shows them: each secret that is set replaced by the mask."""
    secrets = secret_fields(schema)
    out: dict[str, Any] = {}
    for name, value in (values or {}).items():
        secret = name in secrets or SECRET_NAME_RE.search(name)
        out[name] = MASK if secret and value not in (None, "") else value
    return out


def masked_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A model's JSON schema as ``/valves/spec`` shows it: a secret field's default (written in the tool's
    code, and readable here by users who may not read the code) replaced by the mask."""
    if not schema or not isinstance(schema.get("properties"), dict):
        return schema
    secrets = secret_fields(schema)
    props: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if name in secrets and isinstance(prop, dict) and prop.get("default") not in (None, ""):
            prop = {**prop, "default": MASK}
        props[name] = prop
    return {**schema, "properties": props}


def merged_for_update(
    posted: dict[str, Any], stored: dict[str, Any], schema: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """What to validate for an update: ``None`` values dropped (as Open WebUI does), each secret posted as the
    mask given back its stored value (or dropped when none is stored). Returns it and the names that kept a
    stored secret."""
    out: dict[str, Any] = {}
    kept: list[str] = []
    for name, value in posted.items():
        if value is None:
            continue
        if isinstance(value, str) and value in MASKS and is_secret(name, schema):
            if name in stored and stored[name] is not None:
                out[name] = stored[name]
                kept.append(name)
            continue
        out[name] = value
    return out, kept
