"""
title: Literal and Enum
author: executor tests
version: 0.1.0
"""

from enum import Enum, IntEnum
from typing import Literal, Optional


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Priority(IntEnum):
    low = 1
    medium = 2
    high = 3


class Mixed(Enum):
    one = 1
    two = "two"


class Tools:
    def literals(
        self,
        mode: Literal["fast", "slow"],
        level: Literal[1, 2, 3] = 2,
        single: Literal["only"] = "only",
        maybe: Optional[Literal["a", "b"]] = None,
        mixed: Literal["x", 1, True] = "x",
    ) -> str:
        """
        Literal choices.
        :param mode: how fast
        :param level: how much
        """
        return mode

    def enums(
        self,
        color: Color,
        priority: Priority = Priority.medium,
        shade: Color = Color.blue,
        maybe_color: Optional[Color] = None,
        mixed: Mixed = Mixed.one,
        colors: list[Color] = [],
    ) -> str:
        """
        Enum parameters, defaults as members.
        :param color: the color to paint
        :param priority: how urgent
        """
        return str(color)
