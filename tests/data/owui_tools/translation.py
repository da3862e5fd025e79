"""
title: Translator
author: community
version: 0.5.0
description: Translate text with LibreTranslate or DeepL.
"""

from typing import Literal, Optional

import requests
from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        provider: Literal["libretranslate", "deepl"] = Field("libretranslate", description="Which service")
        libretranslate_url: str = Field("http://localhost:5000", description="LibreTranslate instance")
        deepl_api_key: str = Field("", description="DeepL API key")
        formality: str = Field(
            "default",
            description="DeepL formality",
            json_schema_extra={"input": {"type": "select", "options": ["default", "more", "less", "prefer_more", "prefer_less"]}},
        )

    class UserValves(BaseModel):
        target_language: str = Field("EN", description="Your preferred target language")

    def __init__(self):
        self.valves = self.Valves()

    def translate(
        self,
        text: str,
        target_language: Optional[str] = None,
        source_language: str = "auto",
        __user__: Optional[dict] = None,
    ) -> str:
        """
        Translate text into another language.
        :param text: The text to translate.
        :param target_language: ISO 639-1 code of the target language, e.g. "de", "fr", "ja".
                                Defaults to the user's preferred language.
        :param source_language: ISO code of the source language, or "auto" to detect it.
        """
        uv = (__user__ or {}).get("valves")
        target = target_language or (uv.target_language if uv else "EN")
        if self.valves.provider == "deepl":
            r = requests.post(
                "https://api-free.deepl.com/v2/translate",
                headers={"Authorization": f"DeepL-Auth-Key {self.valves.deepl_api_key}"},
                data={"text": text, "target_lang": target.upper(), "formality": self.valves.formality},
                timeout=30,
            )
            return r.json()["translations"][0]["text"]
        r = requests.post(
            f"{self.valves.libretranslate_url}/translate",
            json={"q": text, "source": source_language, "target": target.lower(), "format": "text"},
            timeout=30,
        )
        return r.json()["translatedText"]

    def detect_language(self, text: str) -> dict:
        """
        Detect the language of a text.
        :param text: The text.
        """
        r = requests.post(f"{self.valves.libretranslate_url}/detect", json={"q": text}, timeout=30)
        return r.json()[0]
