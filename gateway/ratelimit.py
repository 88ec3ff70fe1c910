"""Per-key token buckets (per gateway process: with N replicas a key gets up to N × its rate)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from gateway.errors import TooManyRequests


@dataclass
class RateLimiter:
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key id -> (tokens, last refill)

    def check(self, key_id: str, rate: float | None) -> None:
        """Take one token from the key's bucket (capacity = one second of `rate`), or raise TooManyRequests."""
        if not rate or rate <= 0:
            return
        now = time.monotonic()
        capacity = max(rate, 1.0)
        tokens, last = self._buckets.get(key_id, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise TooManyRequests(f"Rate limit of {rate:g} requests per second exceeded for this key. Retry in {wait} s.", wait)
        self._buckets[key_id] = (tokens - 1.0, now)
