"""
title: Unit Converter
author: community
version: 1.0.0
description: Convert between units of length, mass, temperature, volume and speed.
"""

from enum import Enum

from pydantic import BaseModel, Field


class Category(str, Enum):
    length = "length"
    mass = "mass"
    temperature = "temperature"
    volume = "volume"
    speed = "speed"


FACTORS = {
    "length": {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048, "in": 0.0254},
    "mass": {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125},
    "volume": {"l": 1.0, "ml": 0.001, "gal": 3.785411784, "cup": 0.2365882365},
    "speed": {"m/s": 1.0, "km/h": 1 / 3.6, "mph": 0.44704, "kn": 0.514444},
}


class Tools:
    class UserValves(BaseModel):
        decimals: int = Field(4, ge=0, le=12, description="Digits after the decimal point")

    def __init__(self):
        pass

    def convert_units(self, value: float, from_unit: str, to_unit: str, category: Category, __user__: dict = {}) -> str:
        """
        Convert a value from one unit to another.
        :param value: The number to convert.
        :param from_unit: The unit to convert from (e.g. km, lb, C, mph).
        :param to_unit: The unit to convert to.
        :param category: The kind of quantity.
        """
        uv = __user__.get("valves")
        decimals = uv.decimals if uv else 4
        if category == Category.temperature:
            c = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
            out = {"C": c, "F": c * 9 / 5 + 32, "K": c + 273.15}[to_unit]
        else:
            table = FACTORS[category.value]
            out = value * table[from_unit] / table[to_unit]
        return f"{value} {from_unit} = {round(out, decimals)} {to_unit}"

    def list_units(self, category: Category = Category.length) -> list[str]:
        """
        The units a category knows.
        :param category: The kind of quantity.
        """
        if category == Category.temperature:
            return ["C", "F", "K"]
        return list(FACTORS[category.value])
