"""``$ref`` resolution inside one OpenAPI document, with reference cycles cut and expansion bounded."""

from __future__ import annotations

from typing import Any

from executor.openapi.document import DEFAULT_MAX_SPEC_NODES, NodeBudget, too_deep

# What a reference resolves to when it points back at a schema already being expanded on this path:
# an unconstrained schema, as Open WebUI does, so a recursive model still converts.
CYCLE: dict[str, Any] = {}
# Each expansion level is a recursive call (a ``$ref`` hop counts as one too), so this bounds the stack; real
# specs stay far below it (Airflow 2.x reaches 20).
MAX_EXPANSION_DEPTH = 200
EXPANDING = "expanding $ref in the spec makes"


def expansion_budget(max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> NodeBudget:
    """A budget for every node :func:`resolve` makes while converting one document."""
    return NodeBudget(max_nodes, EXPANDING)


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


def resolve(
    node: Any, document: dict[str, Any], seen: frozenset[str] = frozenset(), *, budget: NodeBudget | None = None
) -> Any:
    """Return ``node`` with every local ``$ref`` replaced by a copy of its target, recursively.

    Keys beside a ``$ref`` (allowed from OpenAPI 3.1 on, e.g. a ``description``) override the target's.
    The visited set is per path, so two siblings referring to the same schema both expand; that can grow
    exponentially (each schema referring twice to the one before), so every object and array made is taken
    from ``budget`` (pass one budget for a whole document; by default each call gets its own of
    DEFAULT_MAX_SPEC_NODES). Raises ``SpecError``: ``spec_too_complex`` when the budget runs out,
    ``spec_too_deep`` past :data:`MAX_EXPANSION_DEPTH` nested levels and ``$ref`` hops.
    """
    return _resolve(node, document, seen, expansion_budget() if budget is None else budget, 0)


def _resolve(node: Any, document: dict[str, Any], seen: frozenset[str], budget: NodeBudget, depth: int) -> Any:
    if not isinstance(node, (dict, list)):
        return node
    if depth >= MAX_EXPANSION_DEPTH:
        raise too_deep("expanding $ref in the spec", MAX_EXPANSION_DEPTH)
    depth += 1
    if isinstance(node, list):
        budget.take()
        return [_resolve(item, document, seen, budget, depth) for item in node]
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            budget.take()
            return dict(CYCLE)
        target = lookup(document, ref)
        if not isinstance(target, dict):
            budget.take()
            return {k: _resolve(v, document, seen, budget, depth) for k, v in node.items() if k != "$ref"}
        resolved = _resolve(target, document, seen | {ref}, budget, depth)
        siblings = {k: _resolve(v, document, seen, budget, depth) for k, v in node.items() if k != "$ref"}
        if not siblings:
            return resolved
        budget.take()
        return {**resolved, **siblings}
    budget.take()
    return {k: _resolve(v, document, seen, budget, depth) for k, v in node.items()}


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
