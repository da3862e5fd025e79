"""
title: Time Tools
author: community
version: 1.1.0
description: Current date and time, time zones and date arithmetic.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones


class Tools:
    def __init__(self):
        pass

    def get_current_time(self, timezone: str = "UTC") -> str:
        """
        Get the current time in a time zone.
        :param timezone: An IANA zone such as "Europe/Paris" or "America/New_York".
        """
        if timezone not in available_timezones() and timezone != "UTC":
            return f"Unknown time zone {timezone}"
        return datetime.now(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")

    def days_between(self, start: str, end: str) -> int:
        """
        Days between two dates (YYYY-MM-DD).
        :param start: The first date.
        :param end: The second date.
        """
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).days

    def add_days(self, date: str, days: int) -> str:
        """
        Add (or subtract) days to a date.
        :param date: YYYY-MM-DD.
        :param days: May be negative.
        """
        return (datetime.fromisoformat(date) + timedelta(days=days)).date().isoformat()
