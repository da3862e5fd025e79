"""
title: Calendar
author: community
version: 0.3.0
description: Read and create events on a CalDAV / Google-style calendar API.
"""

import datetime
from typing import Optional
from zoneinfo import ZoneInfo

import requests
from pydantic import BaseModel, Field


class Attendee(BaseModel):
    email: str = Field(..., description="Attendee e-mail")
    optional: bool = Field(False, description="Whether attendance is optional")


class Tools:
    class Valves(BaseModel):
        api_base: str = Field("https://calendar.example.invalid/api", description="Calendar API")
        oauth_client_secret: str = Field("", description="OAuth client secret")

    class UserValves(BaseModel):
        timezone: str = Field("Europe/Amsterdam", description="IANA time zone for dates")
        calendar_id: str = Field(
            "primary",
            json_schema_extra={"input": {"type": "select", "options": "list_calendar_choices"}},
        )

        @classmethod
        def list_calendar_choices(cls, __user__: Optional[dict] = None) -> list[dict]:
            who = (__user__ or {}).get("name") or "me"
            return [{"value": "primary", "label": f"{who} (primary)"}, {"value": "team", "label": "Team"}]

    def __init__(self):
        self.valves = self.Valves()

    def _tz(self, __user__: dict) -> ZoneInfo:
        uv = __user__.get("valves")
        return ZoneInfo(uv.timezone if uv else "UTC")

    def get_current_date(self, __user__: dict = {}) -> str:
        """
        Get the current date and time in the user's time zone.
        """
        now = datetime.datetime.now(self._tz(__user__))
        return now.strftime("%A, %B %d, %Y %H:%M %Z")

    def list_events(
        self,
        start: datetime.date,
        end: Optional[datetime.date] = None,
        max_events: int = 25,
        __user__: dict = {},
        __oauth_token__: Optional[dict] = None,
    ) -> list[dict]:
        """
        List events between two dates.
        :param start: First day, YYYY-MM-DD.
        :param end: Last day, YYYY-MM-DD (defaults to start).
        :param max_events: Maximum number of events.
        """
        token = (__oauth_token__ or {}).get("access_token", "")
        uv = __user__.get("valves")
        r = requests.get(
            f"{self.valves.api_base}/calendars/{uv.calendar_id if uv else 'primary'}/events",
            params={"timeMin": start.isoformat(), "timeMax": (end or start).isoformat(), "maxResults": max_events},
            headers={"Authorization": f"Bearer {token}"},
            timeout=20,
        )
        return r.json().get("items", [])

    def create_event(
        self,
        title: str,
        start: datetime.datetime,
        duration_minutes: int = 60,
        attendees: list[Attendee] = [],
        location: Optional[str] = None,
        description: str = "",
        __user__: dict = {},
        __oauth_token__: Optional[dict] = None,
    ) -> dict:
        """
        Create a calendar event.
        :param title: Event title.
        :param start: Start time (ISO 8601, local to the user's time zone when no offset is given).
        :param duration_minutes: Length of the event.
        :param attendees: People to invite.
        :param location: Where.
        :param description: Details.
        """
        tz = self._tz(__user__)
        begins = start if start.tzinfo else start.replace(tzinfo=tz)
        body = {
            "summary": title,
            "start": {"dateTime": begins.isoformat()},
            "end": {"dateTime": (begins + datetime.timedelta(minutes=duration_minutes)).isoformat()},
            "attendees": [a.model_dump() for a in attendees],
            "location": location,
            "description": description,
        }
        token = (__oauth_token__ or {}).get("access_token", "")
        r = requests.post(f"{self.valves.api_base}/events", json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=20)
        return r.json()
