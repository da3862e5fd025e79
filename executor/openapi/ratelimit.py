"""Rate limits per key (a principal, an API key, a connection): in memory per process, or shared by every replica
through the store (``EXECUTOR_RATE_LIMIT_STORE=database``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from executor.store import Store


class Limiter(Protocol):
    per_minute: int

    async def take(self, key: str) -> float | None:
        """Take one call for ``key``; None when allowed, else the seconds until one is due."""

    async def refund(self, key: str) -> None:
        """Give back a call taken for a request another limit then refused."""


@dataclass
class RateLimiter:
    """``per_minute`` calls per key as a token bucket, refilled continuously, in this process; 0 disables it."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    async def take(self, key: str) -> float | None:
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

    async def refund(self, key: str) -> None:
        if key in self._buckets:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (min(float(self.per_minute), tokens + 1), stamp)


@dataclass
class SharedRateLimiter:
    """``per_minute`` calls per key and clock minute, counted in the store, so replicas share one budget.

    A fixed window (one counter row per key and minute, one upsert per call) rather than a bucket: a bucket's
    read-modify-write would need a lock across replicas. Up to twice the rate can pass around a minute's edge;
    that is the price of one round trip per call."""

    store: Store
    scope: str
    per_minute: int
    clock: float | None = None  # tests pin the time

    def _window(self) -> tuple[int, float]:
        now = self.clock if self.clock is not None else time.time()
        window = int(now // 60)
        return window, (window + 1) * 60 - now

    async def take(self, key: str) -> float | None:
        if self.per_minute <= 0:
            return None
        window, left = self._window()
        count = await self.store.count_call(f"{self.scope}:{key}", window)
        if count > self.per_minute:
            await self.store.count_call(f"{self.scope}:{key}", window, -1)
            return max(left, 0.001)
        return None

    async def refund(self, key: str) -> None:
        if self.per_minute > 0:
            window, _ = self._window()
            await self.store.count_call(f"{self.scope}:{key}", window, -1)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
