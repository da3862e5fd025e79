"""The tool list a model is offered, named and filtered the way Open WebUI 0.12's ``get_tools`` does it.

- Each function keeps its bare ``operationId``; only when that name is already taken (by an earlier server in
  the list) is it prefixed ``{server_id}_``, repeatedly, as Open WebUI's ``while name in tools_dict`` loop does.
- ``config.function_name_filter_list`` (a comma-separated string or a list) works as Open WebUI's
  ``is_string_allowed``: entries without ``!`` form an allow list, ``!name`` entries a block list, both
  matched with ``endswith``; whitespace and surrounding quotes are stripped.
- The spec passes through ``clean_openai_tool_schema``: a two-way ``anyOf`` with null collapses, a ``null``
  default goes, a property without a type becomes a string.
One deviation, documented: a final name longer than 64 characters (the limit OpenAI-style APIs enforce) is cut
with a hash suffix, so the list stays usable; Open WebUI passes such names through unchanged.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

MAX_NAME = 64


def _strip_entry(entry: str) -> str:
    return (entry or "").strip().strip("\"'").strip()


def allow_block_lists(filter_list: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Open WebUI's ``get_allow_block_lists`` (a string is split at commas first, as ``get_tools`` does)."""
    entries = filter_list.split(",") if isinstance(filter_list, str) else list(filter_list or [])
    allow: list[str] = []
    block: list[str] = []
    for raw in entries:
        entry = _strip_entry(str(raw))
        blocked = entry.startswith("!")
        if blocked:
            entry = _strip_entry(entry[1:])
        if entry:
            (block if blocked else allow).append(entry)
    return allow, block


def is_allowed(name: str, filter_list: str | Sequence[str] | None) -> bool:
    """Open WebUI's ``is_string_allowed`` for one name."""
    if not filter_list:
        return True
    allow, block = allow_block_lists(filter_list)
    if allow and not any(name.endswith(a) for a in allow):
        return False
    return not any(name.endswith(b) for b in block)


def _clean_properties(schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    if "anyOf" in schema and isinstance(schema["anyOf"], list):
        non_null = [t for t in schema["anyOf"] if not (isinstance(t, dict) and t.get("type") == "null")]
        if len(non_null) == 1 and isinstance(non_null[0], dict):
            schema.update(non_null[0])
            del schema["anyOf"]
        else:
            schema["anyOf"] = non_null
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    if "type" not in schema and "anyOf" not in schema and "properties" not in schema:
        schema["type"] = "string"
    if isinstance(schema.get("properties"), dict):
        for prop in schema["properties"].values():
            _clean_properties(prop)
    if "items" in schema:
        _clean_properties(schema["items"])


def clean_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Open WebUI's ``clean_openai_tool_schema``: a cleaned deep copy."""
    cleaned = copy.deepcopy(spec)
    if "parameters" in cleaned:
        _clean_properties(cleaned["parameters"])
    return cleaned


def cut(name: str) -> str:
    """``name`` if it fits 64 characters, else its first 55, ``_`` and 8 hex digits of its hash."""
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:55]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def unique_name(base: str, server_id: str, taken: Iterable[str]) -> str:
    """Open WebUI's collision rule: prefix ``{server_id}_`` while the name is taken."""
    used = set(taken)
    name = base
    while name in used:
        name = f"{server_id}_{name}"
    return name
