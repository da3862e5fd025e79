"""
title: RSS Reader
author: community
version: 0.2.0
description: Read RSS and Atom feeds.
"""

import xml.etree.ElementTree as ET
from typing import Optional

import requests
from pydantic import BaseModel, Field

ATOM = "{http://www.w3.org/2005/Atom}"


class Tools:
    class Valves(BaseModel):
        feeds: list[str] = Field(
            default_factory=lambda: ["https://hnrss.org/frontpage", "https://feeds.bbci.co.uk/news/rss.xml"],
            description="Feeds read_all_feeds reads",
        )
        user_agent: str = "OpenWebUI-RSS/0.2"

    def __init__(self):
        self.valves = self.Valves()

    def _parse(self, xml: bytes, limit: int) -> list[dict]:
        root = ET.fromstring(xml)
        items = []
        for it in root.iter("item"):
            items.append({"title": it.findtext("title"), "link": it.findtext("link"), "date": it.findtext("pubDate")})
        for it in root.iter(f"{ATOM}entry"):
            link = it.find(f"{ATOM}link")
            items.append({"title": it.findtext(f"{ATOM}title"), "link": link.get("href") if link is not None else None,
                          "date": it.findtext(f"{ATOM}updated")})
        return items[:limit]

    def read_feed(self, url: str, limit: int = 10, keyword: Optional[str] = None) -> list[dict]:
        """
        Read the latest items of a feed.
        :param url: The feed URL.
        :param limit: How many items.
        :param keyword: Only items whose title contains this word.
        """
        r = requests.get(url, headers={"User-Agent": self.valves.user_agent}, timeout=20)
        items = self._parse(r.content, 1000)
        if keyword:
            items = [i for i in items if keyword.lower() in (i["title"] or "").lower()]
        return items[:limit]

    def read_all_feeds(self, per_feed: int = 5) -> dict[str, list]:
        """
        Read every configured feed.
        :param per_feed: Items per feed.
        """
        return {u: self.read_feed(u, per_feed) for u in self.valves.feeds}
