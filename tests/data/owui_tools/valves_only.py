"""
title: Valves Only
author: executor tests
version: 0.0.1
requirements: requests, httpx>=0.27 ,  pydantic
"""

from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        endpoint: str = Field("http://localhost:8080", description="Endpoint")
        password: str = ""

    def __init__(self):
        self.valves = self.Valves()
