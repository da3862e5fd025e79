"""
title: Weather
author: community
version: 1.0.1
description: Current weather and forecasts from Open-Meteo (no API key needed).
"""

from datetime import datetime
from typing import Literal, Optional

import httpx
from pydantic import BaseModel, Field

WMO_CODES = {0: "Clear sky", 1: "Mainly clear", 2: "Partly cloudy", 3: "Overcast", 61: "Rain"}


class Tools:
    class Valves(BaseModel):
        geocoding_url: str = Field("https://geocoding-api.open-meteo.com/v1/search", description="Geocoding endpoint")
        forecast_url: str = Field("https://api.open-meteo.com/v1/forecast", description="Forecast endpoint")

    class UserValves(BaseModel):
        units: Literal["metric", "imperial"] = Field("metric", description="Temperature and wind units")
        default_city: str = Field("", description="Used when no city is given")

    def __init__(self):
        self.valves = self.Valves()

    async def _geocode(self, client: httpx.AsyncClient, city: str) -> Optional[dict]:
        r = await client.get(self.valves.geocoding_url, params={"name": city, "count": 1})
        r.raise_for_status()
        results = r.json().get("results") or []
        return results[0] if results else None

    async def get_current_weather(self, city: str = "", __user__: dict = {}, __event_emitter__=None) -> str:
        """
        Get the current weather for a city.
        :param city: The city, e.g. "Amsterdam" or "Paris, France". Leave empty for the user's default city.
        :return: A short weather report.
        """
        valves = __user__.get("valves")
        city = city or (valves.default_city if valves else "")
        if not city:
            return "No city given and no default city set."
        imperial = valves is not None and valves.units == "imperial"
        async with httpx.AsyncClient(timeout=10) as client:
            place = await self._geocode(client, city)
            if place is None:
                return f"Could not find {city}."
            params = {
                "latitude": place["latitude"],
                "longitude": place["longitude"],
                "current": "temperature_2m,weather_code,wind_speed_10m",
                "temperature_unit": "fahrenheit" if imperial else "celsius",
            }
            r = await client.get(self.valves.forecast_url, params=params)
            current = r.json()["current"]
        code = WMO_CODES.get(current["weather_code"], "Unknown")
        return f"{place['name']}: {current['temperature_2m']}°, {code}, wind {current['wind_speed_10m']}"

    async def get_forecast(self, city: str, days: int = 3, include_hourly: bool = False) -> dict:
        """
        Get a multi-day weather forecast.
        :param city: The city to forecast.
        :param days: Number of days (1-16).
        :param include_hourly: Also return hourly temperatures.
        """
        async with httpx.AsyncClient(timeout=10) as client:
            place = await self._geocode(client, city)
            if place is None:
                return {"error": f"Could not find {city}"}
            params = {"latitude": place["latitude"], "longitude": place["longitude"], "forecast_days": days,
                      "daily": "temperature_2m_max,temperature_2m_min"}
            if include_hourly:
                params["hourly"] = "temperature_2m"
            r = await client.get(self.valves.forecast_url, params=params)
            return {"city": place["name"], "generated": datetime.now().isoformat(), **r.json()}
