"""
title: Basic Types
author: executor tests
version: 0.1.0
description: Plain parameter types and defaults, as Open WebUI turns them into a spec.
"""

from typing import Any


class Tools:
    def __init__(self):
        self.citation = True

    def scalars(self, text: str, count: int, ratio: float, flag: bool, blob: bytes) -> str:
        """
        Every scalar type, all required.
        :param text: some text
        :param count: a whole number
        :param ratio: a real number
        :param flag: yes or no
        :param blob: raw bytes
        """
        return f"{text} {count} {ratio} {flag} {len(blob)}"

    def defaults(
        self,
        name: str = "world",
        times: int = 3,
        scale: float = 1.5,
        loud: bool = False,
        nothing: str = None,
        tags: list = [],
        options: dict = {},
    ) -> str:
        """Every default kind (note: a None default on a str annotation)."""
        return f"{name}{times}{scale}{loud}{nothing}{tags}{options}"

    def containers(
        self,
        names: list[str],
        matrix: list[list[int]],
        scores: dict[str, float],
        records: list[dict[str, Any]],
        pair: tuple[int, str],
        unique: set[str],
        frozen: frozenset[int],
        anything: Any,
        bare_list: list,
        bare_dict: dict,
        variadic: tuple[int, ...] = (1, 2),
    ) -> dict:
        """
        Containers of every shape.

        :param names: a list of strings
        :param matrix: rows of numbers
        :param scores: name to score
        """
        return {"n": len(names)}

    def no_params(self) -> str:
        """Takes nothing at all."""
        return "ok"
