"""
title: Forward References
author: executor tests
version: 0.1.0
description: Valves that name a model defined later in the file (resolved when Tools() builds them).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        target: Target = Field(default_factory=lambda: Target(), description="Defined below")
        fallback: list[Target] = []

    class UserValves(BaseModel):
        preferred: Target | None = None

    def __init__(self):
        self.valves = self.Valves()
        self.user_defaults = self.UserValves()

    def aim(self, where: Target, strength: int = 1) -> str:
        """
        Aim at a target defined after the class.
        :param where: the target
        """
        return where.name


class Target(BaseModel):
    name: str = "origin"
    x: float = 0.0
    y: float = 0.0
