"""
title: Web Search
author: community
author_url: https://github.com/example/owui-tools
funding_url: https://github.com/sponsors/example
version: 0.4.2
license: MIT
description: Search the web through a SearXNG instance and scrape the top results.
requirements: beautifulsoup4
"""

import asyncio
import json
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import requests
from pydantic import BaseModel, Field


class EventEmitter:
    def __init__(self, event_emitter: Callable[[dict], Any] = None):
        self.event_emitter = event_emitter

    async def emit(self, description="Unknown State", status="in_progress", done=False):
        if self.event_emitter:
            await self.event_emitter(
                {
                    "type": "status",
                    "data": {"status": status, "description": description, "done": done},
                }
            )


class Tools:
    class Valves(BaseModel):
        SEARXNG_ENGINE_API_BASE_URL: str = Field(
            default="https://example.com/search",
            description="The base URL for Search Engine",
        )
        IGNORED_WEBSITES: str = Field(
            default="",
            description="Comma-separated list of websites to ignore",
        )
        RETURNED_SCRAPPED_PAGES_NO: int = Field(
            default=3,
            description="The number of Search Engine Results to Parse",
        )
        SCRAPPED_PAGES_NO: int = Field(
            default=5,
            description="Total pages scapped. Ideally greater than one of the returned pages",
        )
        PAGE_CONTENT_WORDS_LIMIT: int = Field(
            default=5000,
            description="Limit words content for each page.",
        )
        CITATION_LINKS: bool = Field(
            default=False,
            description="If True, send custom citations with links",
        )

    def __init__(self):
        self.valves = self.Valves()
        self.headers = {
            "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
        }

    async def search_web(
        self,
        query: str,
        __event_emitter__: Callable[[dict], Any] = None,
    ) -> str:
        """
        Search the web and get the content of the relevant pages. Search for unknown knowledge, news, info, public contact info, weather, etc.
        :params query: Web Query used in search engine.
        :return: The content of the pages in json format.
        """
        emitter = EventEmitter(__event_emitter__)
        await emitter.emit(f"Initiating web search for: {query}")
        params = {"q": query, "format": "json", "number_of_results": self.valves.RETURNED_SCRAPPED_PAGES_NO}
        try:
            resp = await asyncio.to_thread(
                requests.get, self.valves.SEARXNG_ENGINE_API_BASE_URL, params=params, headers=self.headers, timeout=120
            )
            resp.raise_for_status()
            results = resp.json().get("results", [])
        except requests.exceptions.RequestException as e:
            await emitter.emit(status="error", description=f"Error during search: {e}", done=True)
            return json.dumps({"error": str(e)})
        ignored = [w.strip() for w in self.valves.IGNORED_WEBSITES.split(",") if w.strip()]
        kept = [r for r in results if urlparse(r.get("url", "")).netloc not in ignored]
        await emitter.emit(status="complete", description=f"Found {len(kept)} results", done=True)
        return json.dumps(kept[: self.valves.RETURNED_SCRAPPED_PAGES_NO], ensure_ascii=False)

    async def get_website(
        self, url: str, __event_emitter__: Callable[[dict], Any] = None
    ) -> str:
        """
        Web scrape the website provided and get the content of it.
        :params url: The URL of the website.
        :return: The content of the website in json format.
        """
        emitter = EventEmitter(__event_emitter__)
        await emitter.emit(f"Fetching content from URL: {url}")
        resp = await asyncio.to_thread(requests.get, url, headers=self.headers, timeout=120)
        return json.dumps({"url": url, "content": resp.text[: self.valves.PAGE_CONTENT_WORDS_LIMIT]})
