"""``$ref`` resolution inside one OpenAPI document, with reference cycles cut."""

from __future__ import annotations

from typing import Any

# What a reference resolves to when it points back at a schema already being expanded on this path:
# an unconstrained schema, as Open WebUI does, so a recursive model still converts.
CYCLE: dict[str, Any] = {}


def lookup(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (``#/components/schemas/Pet``); None when it leads nowhere."""
    if not ref.startswith("#/"):
        return None  # remote references are not fetched: that would be an outbound call per $ref
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def resolve(node: Any, document: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """Return ``node`` with every local ``$ref`` replaced by a copy of its target, recursively.

    Keys beside a ``$ref`` (allowed from OpenAPI 3.1 on, e.g. a ``description``) override the target's.
    The visited set is per path, so two siblings referring to the same schema both expand.
    """
    if isinstance(node, list):
        return [resolve(item, document, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return dict(CYCLE)
        target = lookup(document, ref)
        if not isinstance(target, dict):
            return {k: resolve(v, document, seen) for k, v in node.items() if k != "$ref"}
        resolved = resolve(target, document, seen | {ref})
        siblings = {k: resolve(v, document, seen) for k, v in node.items() if k != "$ref"}
        return {**resolved, **siblings} if siblings else resolved
    return {k: resolve(v, document, seen) for k, v in node.items()}


def resolve_shallow(node: Any, document: dict[str, Any]) -> Any:
    """Follow ``$ref`` chains at the top of ``node`` only (for parameter and request-body objects)."""
    seen: set[str] = set()
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"] not in seen:
        seen.add(node["$ref"])
        target = lookup(document, node["$ref"])
        if not isinstance(target, dict):
            return {}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node
