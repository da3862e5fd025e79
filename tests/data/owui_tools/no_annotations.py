"""
title: No Annotations
author: executor tests
version: 0.1.0
"""


class Tools:
    def untyped(self, a, b=1, c="x", d=None, e=[1, 2], f=1.5, g=True):
        """
        No annotation anywhere.
        :param a: anything
        :param d: defaults to nothing
        """
        return a

    def half_typed(self, a: int, b, c: str = "c", d=0) -> str:
        """Some annotated, some not."""
        return str(a)

    def variadic(self, first: str, *args, **kwargs) -> str:
        """
        Star args become plain fields.
        :param first: the first
        """
        return first

    def keyword_only(self, a: str, *, b: int = 2, c) -> str:
        """Keyword-only parameters."""
        return a
