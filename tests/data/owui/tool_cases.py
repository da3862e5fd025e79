"""The inputs of tool_results.json, shared by its generator (run in a venv with open-webui 0.12.4's pins) and
tests/test_tool_specs_parity.py (the service's venv): return values given to ``process_tool_result``, and the
functions and keyword arguments given to ``coerce_kwargs``.

Only the standard library and fastapi (for ``HTMLResponse``, which ``process_tool_result`` tests against).
"""

# The probes spell annotations as tool files do (Optional, Union, quoted): coerce_kwargs looks at exactly these.
# ruff: noqa: UP007, UP037, UP045

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any, Optional, Union

from fastapi.responses import HTMLResponse, JSONResponse

PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)
JPEG = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBD"
INLINE = {"Content-Disposition": "inline"}


class Point:
    """An object with only a ``__str__``: the model gets ``str(value)``."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __str__(self) -> str:
        return f"Point({self.x}, {self.y})"


def html(body: str = "<b>hi</b>", status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(content=body, status_code=status, headers=headers)


# (case name, function name, a factory for the value: process_tool_result mutates lists)
RESULTS: list[tuple[str, str, Callable[[], Any]]] = [
    ("str", "echo", lambda: "hello"),
    ("str unicode", "echo", lambda: "héllo → wörld ✓"),
    ("str empty", "echo", lambda: ""),
    ("str json text", "echo", lambda: '{"a": 1}'),
    ("str data-URL image", "snap", lambda: PNG),
    ("str data-URL image not base64", "snap", lambda: "data:image/svg+xml,<svg></svg>"),
    ("str data-URL not an image", "doc", lambda: "data:text/plain;base64,aGVsbG8="),
    ("dict", "info", lambda: {"a": 1, "b": [1, 2], "ü": "é", "nested": {"x": None, "y": True}}),
    ("dict empty", "info", lambda: {}),
    ("dict int keys", "info", lambda: {1: "one", 2: "two"}),
    ("dict tuple value", "info", lambda: {"t": (1, 2)}),
    ("dict nested data-URL image", "chart", lambda: {"chart": PNG, "meta": {"thumbs": [JPEG, "caption"], "n": 2}}),
    ("dict data-URL image with text after", "chart", lambda: {"img": PNG + " trailing"}),
    ("dict non-image data URI", "doc", lambda: {"file": "data:text/csv;base64,YSxiCjEsMg=="}),
    ("dict with a datetime", "when", lambda: {"at": datetime.datetime(2024, 1, 31, 12, 0)}),
    ("list", "items", lambda: [1, "two", {"three": 3}, None]),
    ("list empty", "items", lambda: []),
    ("list of strings", "items", lambda: ["a", "b"]),
    (
        "list non-image data URIs",
        "files",
        lambda: ["data:text/csv;base64,YSxi", PNG, "data:application/pdf;base64,JVBERi0=", "plain", "data:,raw"],
    ),
    ("list nested data-URL images", "files", lambda: [{"img": JPEG}, [PNG]]),
    ("list MCP-like content items", "mcp_like", lambda: [{"type": "text", "text": "hi"}]),
    ("int", "count", lambda: 42),
    ("int zero", "count", lambda: 0),
    ("float", "ratio", lambda: 1.5),
    ("float nan", "ratio", lambda: math.nan),
    ("bool", "check", lambda: True),
    ("None", "nothing", lambda: None),
    ("bytes", "raw", lambda: b"abc"),
    ("set", "uniq", lambda: {1}),
    ("object with __str__", "point", lambda: Point(1, 2)),
    ("tuple", "pair", lambda: (1, 2)),
    ("tuple empty", "pair", lambda: ()),
    ("tuple of str and int", "pair", lambda: ("a", 1)),
    ("tuple nested", "pair", lambda: ((1, 2.5, None, True), "y")),
    ("tuple of one bool", "pair", lambda: (True,)),
    ("tuple of one float nan", "pair", lambda: (math.nan,)),
    ("tuple with a data-URL image", "pair", lambda: (PNG, 1)),
    ("tuple of a dict with an image", "pair", lambda: ({"img": PNG}, "x")),
    (
        "tuple of dict and headers",
        "pair",
        lambda: ({"a": 1}, {"Content-Type": "text/html", "Content-Disposition": "inline"}),
    ),
    ("HTMLResponse inline", "page", lambda: html(headers=INLINE)),
    ("HTMLResponse not inline", "page", lambda: html("<p>as text</p>")),
    (
        "HTMLResponse attachment named inline",
        "page",
        lambda: html(headers={"Content-Disposition": "attachment; filename=inline.html"}),
    ),
    ("HTMLResponse inline 404", "page", lambda: html("<p>missing</p>", 404, INLINE)),
    ("HTMLResponse inline 500", "page", lambda: html("<p>broken</p>", 500, INLINE)),
    ("HTMLResponse inline 302", "page", lambda: html("<p>moved</p>", 302, INLINE)),
    ("HTMLResponse inline non-UTF-8 body", "page", lambda: HTMLResponse(content=b"<p>caf\xe9</p>", headers=INLINE)),
    ("(HTMLResponse inline, str context)", "page", lambda: (html(headers=INLINE), "A chart is shown.")),
    ("(HTMLResponse inline, dict context)", "page", lambda: (html(headers=INLINE), {"shown": True, "img": PNG})),
    ("(HTMLResponse inline, list context)", "page", lambda: (html(headers=INLINE), ["a", PNG])),
    ("(HTMLResponse inline, int context)", "page", lambda: (html(headers=INLINE), 42)),
    ("(HTMLResponse inline, float context)", "page", lambda: (html(headers=INLINE), 1.5)),
    ("(HTMLResponse inline, bool context)", "page", lambda: (html(headers=INLINE), False)),
    ("(HTMLResponse inline, tuple context)", "page", lambda: (html(headers=INLINE), ("a", "b"))),
    ("(HTMLResponse inline, None context)", "page", lambda: (html(headers=INLINE), None)),
    ("(HTMLResponse inline 404, str context)", "page", lambda: (html("<p>x</p>", 404, INLINE), "ignored")),
    ("(HTMLResponse not inline, str context)", "page", lambda: (html("<p>body</p>"), "ignored")),
    ("(HTMLResponse, context, extra)", "page", lambda: (html(headers=INLINE), "a", "b")),
    ("JSONResponse", "api", lambda: JSONResponse({"a": 1})),
]


# -- coerce_kwargs --------------------------------------------------------------------------------------------


def probe(
    i: int = 0,
    oi: Optional[int] = None,
    ni: int | None = None,
    s: str = "",
    os_: Optional[str] = None,
    ns: str | None = None,
    f: float = 0.0,
    b: bool = False,
    lst: list = [],  # noqa: B006 (as tool files write it)
    u: Union[int, str] = 0,
    three: Union[int, str, None] = None,
    n=None,
    **rest: Any,
) -> dict[str, Any]:
    """Every annotation coerce_kwargs looks at; returns what it was called with."""
    got = {"i": i, "oi": oi, "ni": ni, "s": s, "os_": os_, "ns": ns, "f": f, "b": b, "lst": lst, "u": u,
           "three": three, "n": n, **rest}  # fmt: skip
    return got


def probe_unresolvable(a: "int" = 0, b: "NoSuchType" = None) -> dict[str, Any]:  # type: ignore[name-defined]  # noqa: F821
    """get_type_hints fails: coerce_kwargs falls back to the raw (string) annotations and coerces nothing."""
    return {"a": a, "b": b}


PROBES: dict[str, Callable[..., Any]] = {"probe": probe, "probe_unresolvable": probe_unresolvable}

# (case name, probe name, keyword arguments as the model sent them)
COERCIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("str to int", "probe", {"i": "5"}),
    ("padded str to int", "probe", {"i": " 7 "}),
    ("negative str to int", "probe", {"i": "-3"}),
    ("float str to int fails", "probe", {"i": "5.0"}),
    ("empty str to int fails", "probe", {"i": ""}),
    ("word to int fails", "probe", {"i": "five"}),
    ("float to int untouched", "probe", {"i": 5.5}),
    ("bool to int untouched", "probe", {"i": True}),
    ("str to Optional[int]", "probe", {"oi": "8"}),
    ("str to int | None", "probe", {"ni": "9"}),
    ("None stays None", "probe", {"oi": None, "s": None}),
    ("int to str", "probe", {"s": 5}),
    ("float to str", "probe", {"s": 1.25}),
    ("bool to str untouched", "probe", {"s": False}),
    ("int to Optional[str]", "probe", {"os_": 3}),
    ("float to str | None", "probe", {"ns": 2.5}),
    ("str to float untouched", "probe", {"f": "1.5"}),
    ("int to float untouched", "probe", {"f": 2}),
    ("str to bool untouched", "probe", {"b": "true"}),
    ("str to list untouched", "probe", {"lst": "[1, 2]"}),
    ("str to Union[int, str] untouched", "probe", {"u": "5"}),
    ("str to Union[int, str, None] untouched", "probe", {"three": "5"}),
    ("unannotated untouched", "probe", {"n": "5"}),
    ("unknown keyword untouched", "probe", {"extra": "5"}),
    ("several at once", "probe", {"i": "1", "s": 2, "oi": "3", "f": "4"}),
    ("unresolvable hints coerce nothing", "probe_unresolvable", {"a": "5", "b": 6}),
]


def typed(value: dict[str, Any]) -> dict[str, Any]:
    """A kwargs dict as JSON with each value's type: coercion is about types (1 vs "1" vs True)."""
    return {k: {"type": type(v).__name__, "value": v} for k, v in value.items()}
