"""
title: Kinds of Callables
author: executor tests
version: 0.1.0
"""

import asyncio


def module_level(query: str, page: int = 1) -> str:
    """
    A plain function stored on the instance.
    :param query: what to look for
    """
    return query


class Tools:
    class Helper:
        """A nested class: never a function."""

    def __init__(self):
        self.valves = None
        self.shortcut = module_level
        self.counter = 0

    async def async_one(self, n: int) -> int:
        """An async function."""
        await asyncio.sleep(0)
        return n

    def sync_one(self, n: int) -> int:
        """A sync function."""
        return n

    @staticmethod
    def static_one(word: str, times: int = 2) -> str:
        """
        A staticmethod.
        :param word: repeated
        """
        return word * times

    @classmethod
    def class_one(cls, flag: bool = False) -> str:
        """A classmethod."""
        return str(flag)

    def _private(self, x: int) -> int:
        return x

    def __call__(self, x: int) -> int:
        return x

    @property
    def computed(self) -> str:
        return "not callable"
