"""
title: Home Assistant
author: community
version: 0.4.0
description: Read sensor states and control devices through the Home Assistant REST API.
"""

from typing import Any, Literal, Optional, Union

import requests
from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        HA_URL: str = Field("http://homeassistant.local:8123", description="Home Assistant URL")
        HA_TOKEN: str = Field("", description="Long-lived access token")
        ALLOWED_DOMAINS: list[str] = Field(["light", "switch", "climate", "cover"], description="Controllable domains")

    def __init__(self):
        self.valves = self.Valves()

    def _h(self) -> dict:
        return {"Authorization": f"Bearer {self.valves.HA_TOKEN}", "Content-Type": "application/json"}

    def get_state(self, entity_id: str) -> dict:
        """
        Get the state and attributes of an entity.
        :param entity_id: e.g. sensor.living_room_temperature, light.kitchen
        """
        return requests.get(f"{self.valves.HA_URL}/api/states/{entity_id}", headers=self._h(), timeout=10).json()

    def list_entities(self, domain: Optional[str] = None) -> list[str]:
        """
        List entity ids, optionally of one domain.
        :param domain: e.g. light, sensor, switch
        """
        states = requests.get(f"{self.valves.HA_URL}/api/states", headers=self._h(), timeout=10).json()
        return [s["entity_id"] for s in states if domain is None or s["entity_id"].startswith(f"{domain}.")]

    def call_service(
        self,
        entity_id: str,
        action: Literal["turn_on", "turn_off", "toggle"],
        brightness: Optional[int] = None,
        temperature: Optional[float] = None,
        extra: dict[str, Union[str, int, float, bool]] = {},
        __event_emitter__=None,
    ) -> str:
        """
        Switch a device, optionally setting brightness (0-255) or a target temperature.
        :param entity_id: The entity to control.
        :param action: What to do.
        :param brightness: Light brightness 0-255.
        :param temperature: Climate target temperature.
        :param extra: Further service data.
        """
        domain = entity_id.split(".")[0]
        if domain not in self.valves.ALLOWED_DOMAINS:
            return f"Domain {domain} is not allowed."
        data: dict[str, Any] = {"entity_id": entity_id, **extra}
        if brightness is not None:
            data["brightness"] = brightness
        if temperature is not None:
            data["temperature"] = temperature
        requests.post(f"{self.valves.HA_URL}/api/services/{domain}/{action}", headers=self._h(), json=data, timeout=10)
        return f"{action} {entity_id}: done"
