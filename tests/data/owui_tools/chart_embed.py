"""
title: Chart Embed
author: community
version: 0.1.0
description: Render a bar chart as an embedded HTML page, or as an SVG image.
"""

import base64
import html
from typing import Optional

from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field


class Series(BaseModel):
    label: str
    value: float = Field(..., ge=0)


class Tools:
    class Valves(BaseModel):
        bar_color: str = Field("#4f46e5", description="CSS color of the bars")

    def __init__(self):
        self.valves = self.Valves()

    def _svg(self, data: list[Series], title: str) -> str:
        top = max((s.value for s in data), default=1) or 1
        bars = "".join(
            f'<rect x="{10 + i * 40}" y="{110 - 100 * s.value / top}" width="30" height="{100 * s.value / top}" '
            f'fill="{self.valves.bar_color}"><title>{html.escape(s.label)}</title></rect>'
            for i, s in enumerate(data)
        )
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{20 + 40 * len(data)}" height="120">{bars}</svg>'

    def bar_chart(self, data: list[Series], title: str = "Chart", inline: bool = True):
        """
        Show a bar chart in the chat.
        :param data: The bars, label and value each.
        :param title: Heading of the chart.
        :param inline: Embed it in the message (otherwise the model gets the HTML).
        """
        page = f"<html><body><h3>{html.escape(title)}</h3>{self._svg(data, title)}</body></html>"
        headers = {"Content-Disposition": "inline"} if inline else {}
        return HTMLResponse(content=page, headers=headers), f"A bar chart titled {title} with {len(data)} bars is shown."

    def bar_chart_image(self, data: list[Series], title: Optional[str] = None) -> str:
        """
        The bar chart as an SVG image.
        :param data: The bars.
        """
        svg = self._svg(data, title or "")
        return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
