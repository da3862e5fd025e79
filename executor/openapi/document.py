"""Parsing and checking an OpenAPI document (JSON or YAML, OpenAPI 3.0 or 3.1).

Specs come from admins and from the tool servers themselves, so parsing is bounded: YAML aliases are refused
(they let a few hundred bytes expand to gigabytes), and documents with more than a node budget or nested
deeper than :data:`MAX_SPEC_DEPTH` are refused with a :class:`SpecError` rather than exhausting memory or
the stack.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

# A tenfold margin over the largest real spec in the tests (Airflow's 2.x API: 18_000 values, 2_800 more
# made by $ref expansion) while bounding what one spec may cost in memory and CPU.
DEFAULT_MAX_SPEC_NODES = 200_000
# The setting that carries the node budget; error messages name it so an admin knows what to raise.
MAX_NODES_SETTING = "EXECUTOR_TOOL_SERVER_MAX_SPEC_NODES"
# Real schemas nest a few dozen levels at most; the cap keeps every recursive walk of a document (ours,
# json, copy.deepcopy, FastAPI's encoder) far from Python's recursion limit.
MAX_SPEC_DEPTH = 100


class SpecError(Exception):
    """A spec could not be used; ``code`` says why in one word, the message in a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeBudget:
    """How many nodes handling one document may still make; :meth:`take` raises once the limit is passed.

    ``activity`` finishes the error message, e.g. "the spec has" or "expanding $ref in the spec makes".
    """

    __slots__ = ("activity", "limit", "used")

    def __init__(self, limit: int, activity: str) -> None:
        self.limit = limit
        self.activity = activity
        self.used = 0

    def take(self, count: int = 1) -> None:
        """Count ``count`` more nodes; raise ``SpecError("spec_too_complex")`` when over the limit."""
        self.used += count
        if self.used > self.limit:
            raise SpecError(
                "spec_too_complex",
                f"{self.activity} more than {self.limit} nodes (the limit is set by {MAX_NODES_SETTING})",
            )


def too_deep(activity: str, limit: int = MAX_SPEC_DEPTH) -> SpecError:
    """The error for a document (or its expansion) nested deeper than ``limit`` levels."""
    return SpecError("spec_too_deep", f"{activity} nests deeper than {limit} levels (a fixed limit)")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and counts nodes and depth while composing, before anything is built."""

    def __init__(self, text: str, budget: NodeBudget) -> None:
        super().__init__(text)
        self.budget = budget
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            # An alias is where the expansion happens (the constructor shares the node, json.dumps and every
            # walk after it copy it per use), so it is refused here, before anything is expanded.
            event: AliasEvent = self.current_event  # check_event has just parsed it
            where = f", line {event.start_mark.line + 1}" if event.start_mark is not None else ""
            raise SpecError(
                "yaml_aliases",
                f"the spec uses a YAML alias (*{event.anchor}{where}); aliases are not accepted: "
                "write the document out in full, or send it as JSON",
            )
        # A mapping key is composed with index None; keys are not counted, as in measure().
        if not (isinstance(parent, MappingNode) and index is None):
            self.budget.take()
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise too_deep("the spec")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def measure(doc: Any, *, max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> int:
    """Count the values in ``doc`` (objects, arrays and scalars; not keys) and check its depth; return the count.

    Iterative, so a deeply nested document cannot exhaust the stack. Raises ``SpecError`` with
    ``spec_too_complex`` past ``max_nodes`` or ``spec_too_deep`` past :data:`MAX_SPEC_DEPTH` levels.
    """
    budget = NodeBudget(max_nodes, "the spec has")
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        budget.take()
        if depth > MAX_SPEC_DEPTH:
            raise too_deep("the spec")
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return budget.used


def parse(text: str | bytes, *, max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> dict[str, Any]:
    """Parse JSON, falling back to YAML (as Open WebUI does); return a JSON-safe dict.

    Raises ``SpecError``: ``not_json_or_yaml``, ``not_openapi`` (not an object), ``yaml_aliases``,
    ``spec_too_complex`` (more than ``max_nodes`` values) or ``spec_too_deep``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
    except RecursionError:
        raise too_deep("the spec") from None
    except ValueError:
        doc = _parse_yaml(text, max_nodes)
    else:
        measure(doc, max_nodes=max_nodes)
    if not isinstance(doc, dict):
        raise SpecError("not_openapi", "the spec is not an object (expected an OpenAPI 3.x document)")
    return doc


def _parse_yaml(text: str, max_nodes: int) -> Any:
    loader = _BoundedLoader(text, NodeBudget(max_nodes, "the spec has"))
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpecError("not_json_or_yaml", f"the spec is neither JSON nor YAML: {exc}") from None
    except RecursionError:
        raise too_deep("the spec") from None
    finally:
        loader.dispose()
    # YAML gives dates and integer keys (status codes); normalise to what a JSON spec would hold.
    return json.loads(json.dumps(doc, default=str))


def check(doc: dict[str, Any]) -> int:
    """Raise :class:`SpecError` unless ``doc`` is OpenAPI 3.x with an operation; return the count."""
    version = doc.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        found = f"swagger {doc['swagger']}" if "swagger" in doc else f"openapi {version!r}"
        raise SpecError("not_openapi_3", f"the spec is not OpenAPI 3.x (found {found})")
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise SpecError("no_operations", "the spec has no 'paths' object")
    count = sum(
        1
        for item in paths.values()
        if isinstance(item, dict)
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace")
        and isinstance(op, dict)
        and op.get("operationId")
    )
    if not count:
        raise SpecError("no_operations", "the spec has no operation with an operationId")
    return count
