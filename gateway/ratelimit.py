"""Per-key token buckets (per gateway process: with N replicas a key gets up to N × its rate); one token per image."""

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

    def charge(self, key_id: str, rate: float | None, tokens: float) -> None:
        """Take `tokens` more from a bucket that `check` just admitted (extra images of one request), going into
        debt if needed: the key's next requests then wait until the debt is paid back."""
        if not rate or rate <= 0 or tokens <= 0 or key_id not in self._buckets:
            return
        left, last = self._buckets[key_id]
        self._buckets[key_id] = (left - tokens, last)
