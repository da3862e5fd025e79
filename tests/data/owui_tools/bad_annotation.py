"""
title: Unschemable
author: executor tests
version: 0.1.0
"""


class Connection:
    """Not a pydantic type."""


class Tools:
    def fine(self, x: int) -> int:
        """Fine on its own."""
        return x

    def broken(self, conn: Connection) -> str:
        """Pydantic cannot build a schema for this parameter."""
        return "never"
