"""Parsing and checking an OpenAPI document (JSON or YAML, OpenAPI 3.0 or 3.1)."""

from __future__ import annotations

import json
from typing import Any

import yaml


class SpecError(Exception):
    """A spec could not be used; ``code`` says why in one word, the message in a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(text: str | bytes) -> dict[str, Any]:
    """Parse JSON, falling back to YAML (as Open WebUI does); return a JSON-safe dict."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError("not_json_or_yaml", f"the spec is neither JSON nor YAML: {exc}") from None
        # YAML gives dates and integer keys (status codes); normalise to what a JSON spec would hold.
        doc = json.loads(json.dumps(doc, default=str))
    if not isinstance(doc, dict):
        raise SpecError("not_openapi", "the spec is not an object (expected an OpenAPI 3.x document)")
    return doc


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
