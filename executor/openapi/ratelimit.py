"""Token-bucket rate limits, in memory (per process), keyed by principal or connection."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """``per_minute`` calls per key, refilled continuously; 0 disables the limit."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float | None:
        """Take one token for ``key``; return None when allowed, else the seconds until a token is due."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, stamp = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate
        self._buckets[key] = (tokens - 1, now)
        return None

    def refund(self, key: str) -> None:
        """Give back a token taken for a call another limit then refused."""
        if key in self._buckets:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (min(float(self.per_minute), tokens + 1), stamp)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
