"""
title: Keeper
author: tests
version: 0.1
description: Valves, user valves, __user__, events, event calls, embeds, images and errors, end to end.
"""

import asyncio
import os

from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, SecretStr


class Tools:
    class Valves(BaseModel):
        api_key: str = Field("", description="A secret by its name")
        base_url: str = Field("https://example.invalid", description="Not a secret")
        password: SecretStr = Field(SecretStr(""), description="A SecretStr")
        retries: int = Field(2, ge=0, le=5)

    class UserValves(BaseModel):
        units: str = Field("metric", description="metric or imperial")
        token: str = Field("", description="The user's own secret")

    def __init__(self):
        self.valves = self.Valves()
        self.calls = 0

    def whoami(self, __user__: dict, __id__: str = "") -> dict:
        """
        Who is calling, and what this tool sees.
        """
        self.calls += 1
        valves = __user__["valves"]
        return {
            "user": {k: __user__[k] for k in ("id", "name", "role")},
            "tool_id": __id__,
            "api_key": self.valves.api_key,
            "password": self.valves.password.get_secret_value(),
            "retries": self.valves.retries,
            "units": valves.units,
            "token": valves.token,
            "calls": self.calls,
            "pid": os.getpid(),
        }

    async def countdown(self, n: int, __event_emitter__=None) -> str:
        """
        Count down, one status event per step.
        :param n: where to start
        """
        for i in range(n, 0, -1):
            await __event_emitter__({"type": "status", "data": {"description": f"{i}", "done": False}})
            await asyncio.sleep(0.05)
        await __event_emitter__({"type": "status", "data": {"description": "liftoff", "done": True}})
        return f"counted down from {n}"

    async def confirm(self, what: str, __event_call__=None) -> str:
        """
        Ask the user first.
        :param what: what to do
        """
        answer = await __event_call__(
            {"type": "confirmation", "data": {"title": "Sure?", "message": f"Really {what}?"}}
        )
        return f"{what}: {'yes' if answer else 'no'}"

    def add(self, a: int, b: int) -> int:
        """
        Add two numbers (sync).
        :param a: first
        :param b: second
        """
        print("adding", a, b)
        return a + b

    def embed(self) -> HTMLResponse:
        """
        An HTML embed.
        """
        return HTMLResponse("<b>hello</b>", headers={"Content-Disposition": "inline"})

    def picture(self) -> str:
        """
        A tiny PNG as a data URL.
        """
        return (
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2O"
            "UAAAAABJRU5ErkJggg=="
        )

    def fail(self, why: str) -> str:
        """
        Raise.
        :param why: the message
        """
        raise ValueError(why)

    def snoop(self) -> dict:
        """
        What else can this sandbox see: the service's environment, other tools' valves, other users' data.
        """
        import gc
        import sys

        seen_valves = [type(o).__qualname__ for o in gc.get_objects() if isinstance(o, BaseModel)]
        return {
            "env": sorted(os.environ),
            "tool_modules": sorted(m for m in sys.modules if m.startswith("tool_")),
            "models": sorted(set(seen_valves)),
            "files": sorted(os.listdir(os.getcwd())),
        }

    def sleepy(self, seconds: float) -> str:
        """
        Sleep.
        :param seconds: how long
        """
        import time

        time.sleep(seconds)
        return "woke"
