"""
title: Other
"""

from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        other_secret: str = Field("", description="Another tool's secret")

    def __init__(self):
        self.valves = self.Valves()

    def ping(self) -> str:
        """Ping."""
        return "pong"
