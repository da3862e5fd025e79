"""
title: Wikipedia
author: community
version: 0.1.5
description: Search Wikipedia and fetch article summaries.
"""

from typing import Any, Callable, Optional

import requests
from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        language: str = Field("en", description="Wikipedia language edition, e.g. en, de, fr")
        max_results: int = Field(5, description="Search results to return")

    class UserValves(BaseModel):
        language: Optional[str] = Field(None, description="Your language edition (overrides the admin's)")

    def __init__(self):
        self.valves = self.Valves()
        self.citation = False

    def _lang(self, __user__: Optional[dict]) -> str:
        uv = (__user__ or {}).get("valves")
        return (uv.language if uv and uv.language else None) or self.valves.language

    async def search_wikipedia(
        self, query: str, __user__: Optional[dict] = None, __event_emitter__: Optional[Callable[[dict], Any]] = None
    ) -> str:
        """
        Search Wikipedia and return the titles and snippets of matching articles.
        :param query: The search terms.
        """
        lang = self._lang(__user__)
        r = requests.get(
            f"https://{lang}.wikipedia.org/w/api.php",
            params={"action": "query", "list": "search", "srsearch": query, "format": "json",
                    "srlimit": self.valves.max_results},
            timeout=15,
        )
        hits = r.json()["query"]["search"]
        if __event_emitter__:
            for hit in hits:
                await __event_emitter__(
                    {
                        "type": "citation",
                        "data": {
                            "document": [hit["snippet"]],
                            "metadata": [{"source": hit["title"]}],
                            "source": {"name": hit["title"], "url": f"https://{lang}.wikipedia.org/wiki/{hit['title']}"},
                        },
                    }
                )
        return "\n".join(f"- {h['title']}: {h['snippet']}" for h in hits)

    async def get_article_summary(self, title: str, sentences: int = 5, __user__: Optional[dict] = None) -> str:
        """
        Get the introduction of a Wikipedia article.
        :param title: The exact article title.
        :param sentences: How many sentences of the introduction.
        """
        lang = self._lang(__user__)
        r = requests.get(
            f"https://{lang}.wikipedia.org/w/api.php",
            params={"action": "query", "prop": "extracts", "exsentences": sentences, "explaintext": 1,
                    "titles": title, "format": "json"},
            timeout=15,
        )
        pages = r.json()["query"]["pages"]
        return next(iter(pages.values())).get("extract", "Not found")
