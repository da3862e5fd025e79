"""
title: Valves Everywhere
author: executor tests
author_url: https://example.invalid/tests
version: 1.2.3
licence: MIT
required_open_webui_version: 0.6.0
description: Valves and UserValves with secrets, selects (static and dynamic) and nested settings.
"""

from enum import Enum
from typing import Literal, Optional

from pydantic import BaseModel, Field, SecretStr


class Region(str, Enum):
    eu = "eu"
    us = "us"


class Retry(BaseModel):
    attempts: int = Field(3, ge=0, le=10, description="How many attempts")
    backoff_s: float = 0.5


class Tools:
    class Valves(BaseModel):
        api_key: SecretStr = Field(SecretStr(""), description="The provider's API key")
        base_url: str = Field("https://api.example.invalid", description="Where the API lives")
        timeout_s: int = Field(30, ge=1, le=600, description="Request timeout")
        priority: str = Field(
            "medium",
            description="Static select",
            json_schema_extra={"input": {"type": "select", "options": ["low", "medium", "high"]}},
        )
        model: str = Field(
            "",
            description="Dynamic select from a classmethod taking __user__",
            json_schema_extra={"input": {"type": "select", "options": "get_model_options"}},
        )
        flavour: str = Field(
            "plain",
            description="Dynamic select from a method taking user",
            json_schema_extra={"input": {"options": "get_flavours"}},
        )
        static_labels: str = Field(
            "a",
            json_schema_extra={"input": {"type": "select", "options": [{"value": "a", "label": "Alpha"}, {"value": "b", "label": "Beta"}]}},
        )
        missing_method: str = Field("", json_schema_extra={"input": {"type": "select", "options": "no_such_method"}})
        raising_method: str = Field("", json_schema_extra={"input": {"type": "select", "options": "explode"}})
        not_a_list: str = Field("", json_schema_extra={"input": {"type": "select", "options": "give_dict"}})
        no_options: str = Field("", json_schema_extra={"input": {"type": "textarea"}})
        marked_secret: str = Field("", json_schema_extra={"secret": True})
        region: Region = Region.eu
        mode: Literal["fast", "safe"] = "safe"
        retry: Retry = Field(default_factory=Retry)
        domains: list[str] = Field(default_factory=lambda: ["example.com"], description="Allowed domains")
        proxy: Optional[str] = Field(None, description="Optional proxy URL")
        enabled: bool = True
        ratio: float = Field(0.25, gt=0, lt=1)
        pattern: str = Field("^[a-z]+$", pattern=r"^\^.*\$$", min_length=2, max_length=64, title="Regex Pattern")

        @classmethod
        def get_model_options(cls, __user__=None) -> list[dict]:
            name = (__user__ or {}).get("name", "nobody")
            return [{"value": "gpt-4o", "label": f"GPT-4o for {name}"}, {"value": "llama3", "label": "Llama 3"}]

        @classmethod
        def get_flavours(cls, user=None) -> list[str]:
            role = (user or {}).get("role", "none")
            return ["plain", f"for-{role}"]

        @classmethod
        def explode(cls) -> list[str]:
            raise RuntimeError("cannot list options")

        @classmethod
        def give_dict(cls) -> dict:
            return {"a": 1}

    class UserValves(BaseModel):
        token: SecretStr = Field(default=SecretStr(""), description="Your personal token")
        units: Literal["metric", "imperial"] = Field("metric", description="Units of measure")
        language: str = Field(
            "en",
            description="Static select",
            json_schema_extra={"input": {"type": "select", "options": ["en", "nl", "de"]}},
        )
        calendar: str = Field(
            "",
            json_schema_extra={"input": {"type": "select", "options": "get_calendars"}},
        )
        show_status: bool = Field(True, description="Emit status events")
        max_items: Optional[int] = None

        @classmethod
        def get_calendars(cls, __user__=None, user=None) -> list[dict]:
            who = (__user__ or {}).get("id", "?")
            also = (user or {}).get("email", "?")
            return [{"value": f"{who}-work", "label": "Work"}, {"value": "shared", "label": also}]

    def __init__(self):
        self.valves = self.Valves()

    def status(self, __user__: dict = {}) -> dict:
        """Report the settings in use."""
        return {"base_url": self.valves.base_url, "units": __user__["valves"].units}
