"""
title: Postponed Annotations
author: executor tests
version: 0.1.0
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class Filter(BaseModel):
    field: str
    op: Literal["eq", "ne", "gt", "lt"] = "eq"
    value: str | int | None = None


class Tools:
    class Valves(BaseModel):
        limit: int = Field(50, description="Maximum rows")
        filters: list[Filter] = []

    def __init__(self):
        self.valves = self.Valves()

    def query(self, table: str, filters: list[Filter] | None = None, order: Optional[str] = None, limit: int = 10) -> str:
        """
        Query a table with string annotations.
        :param table: table name
        :param filters: filters to apply
        """
        return table
