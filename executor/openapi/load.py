"""A spec from raw text (or an inline object) to checked operations, off the event loop.

Parsing YAML and expanding ``$ref`` are CPU-bound and, even bounded, can take a noticeable time for a large
document; :func:`prepare_async` runs them in a worker thread so other requests keep being served.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from executor.openapi.convert import Operation, operations
from executor.openapi.document import DEFAULT_MAX_SPEC_NODES, check, measure, parse


@dataclass(frozen=True)
class PreparedSpec:
    """A parsed, checked and converted spec."""

    spec: dict[str, Any]
    ops: list[Operation]
    count: int  # operations with an operationId, as document.check counts them


def prepare(raw: str | bytes | dict[str, Any], *, max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> PreparedSpec:
    """Parse (unless already an object), check and convert one spec; raise ``SpecError`` if unusable.

    ``max_nodes`` bounds both the document itself and, separately, what ``$ref`` expansion makes from it.
    """
    if isinstance(raw, dict):
        # An inline object skipped the parser's limits but not the cost of walking it.
        measure(raw, max_nodes=max_nodes)
        spec = raw
    else:
        spec = parse(raw, max_nodes=max_nodes)
    count = check(spec)
    return PreparedSpec(spec=spec, ops=operations(spec, max_nodes=max_nodes), count=count)


async def prepare_async(raw: str | bytes | dict[str, Any], *, max_nodes: int = DEFAULT_MAX_SPEC_NODES) -> PreparedSpec:
    """:func:`prepare` in a worker thread, so the event loop never parses or expands a spec."""
    return await asyncio.to_thread(prepare, raw, max_nodes=max_nodes)
