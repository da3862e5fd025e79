"""
title: Facets
author: tests
version: 0.1
description: One function per kind of return value, a name another tool has too, and display_file.
"""

from fastapi.responses import HTMLResponse, JSONResponse

PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2O"
    "UAAAAABJRU5ErkJggg=="
)


class Tools:
    def add(self, a: int, b: int = 1) -> int:
        """
        Add, in another tool (the name is taken).
        :param a: first
        :param b: second
        """
        return a + b

    def display_file(self, path: str) -> str:
        """
        Show a file (Open WebUI adds inline and page to functions of this name).
        :param path: the file
        """
        return f"shown {path}"

    def nothing(self) -> None:
        """Return None."""
        return None

    def flag(self, on: bool = True) -> bool:
        """
        A bool.
        :param on: the value
        """
        return on

    def ratio(self, x: float, note: str | None = None) -> float:
        """
        A float, and an optional parameter.
        :param x: the value
        :param note: ignored
        """
        return x / 4

    def gallery(self) -> list:
        """A list with an image, a data URL that is not an image, and text."""
        return [PNG, "data:text/plain;base64,aGk=", "text"]

    def report(self) -> dict:
        """A dict with an image inside."""
        return {"title": "r", "figures": [PNG], "n": 1}

    def framed(self) -> tuple:
        """An embed with context for the model."""
        return HTMLResponse("<i>framed</i>", headers={"Content-Disposition": "inline"}), "the context"

    def page(self) -> HTMLResponse:
        """HTML that is not inline."""
        return HTMLResponse("<p>not inline</p>")

    def raw(self) -> JSONResponse:
        """A JSON response object."""
        return JSONResponse({"k": 1})

    def pair(self) -> tuple:
        """A plain tuple."""
        return ("a", "b")

    def thing(self) -> object:
        """Something that is not JSON."""

        class Thing:
            def __str__(self) -> str:
                return "a thing"

        return Thing()

    def nan(self) -> float:
        """Not a number."""
        return float("nan")
