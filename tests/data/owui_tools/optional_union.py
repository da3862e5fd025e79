"""
title: Optional and Union
author: executor tests
version: 0.1.0
"""

from typing import Optional, Union


class Tools:
    def optionals(
        self,
        a: Optional[str],
        b: Optional[int] = None,
        c: str | None = None,
        d: Optional[list[str]] = None,
        e: Optional[dict[str, int]] = None,
        f: Optional[float] = 2.5,
        g: Optional[bool] = True,
    ) -> str:
        """
        Optional in every spelling.
        :param a: required but nullable
        :param b: an optional number
        :param d: optional list
        """
        return "ok"

    def unions(
        self,
        x: Union[int, str],
        y: Union[int, str, None] = None,
        z: int | list[int] = 0,
        w: Union[str, list[str], None] = "one",
        v: Union[float, int] = 1,
        u: Union[None, str] = None,
    ) -> str:
        """
        Unions of two, three and nested types.
        :param x: int or string
        :param y: int, string or nothing
        :param z: one or many
        """
        return "ok"
