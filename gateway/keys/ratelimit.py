"""Per-key rate limits as GCRA (generic cell rate algorithm), one token per image.

A key with `rate` r gets a bucket of max(r, 1) tokens refilled at r per second. GCRA keeps one number per key, the
theoretical arrival time (TAT): the bucket is full when TAT <= now, and taking `cost` tokens moves TAT forward by
cost / r seconds. The same arithmetic runs in-process here (embedded state) and as a Lua script in Redis (GCRA_LUA,
run by gateway/keys/redis_store.py), in integer microseconds so both agree exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from gateway.errors import TooManyRequests

US = 1_000_000
# A key's rate, in images per second. Below MIN_RATE (one image per ~17 min) a token's interval in microseconds stops
# being a number GCRA can use (1e-300/s breaks the Lua script, 1e-320/s overflows to infinity); MAX_RATE is far above
# what one gateway serves. The admin API and the CLI refuse rates outside; `shape` clamps any stored before the check.
MIN_RATE = 0.001
MAX_RATE = 1e6


def check_rate(rate: float) -> float:
    """`rate` as a float, or ValueError saying the allowed range."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"a rate is images per second from {MIN_RATE:g} to {MAX_RATE:g}, e.g. 10")
    return float(rate)


@dataclass(frozen=True)
class Quota:
    """What a take left: the bucket size, whole tokens left, seconds until full, and (refused) seconds to wait."""

    limit: float
    remaining: int
    reset_s: float
    retry_after_s: float | None = None

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": f"{self.limit:g}",
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(max(0, math.ceil(self.reset_s))),
        }

    def refuse(self) -> TooManyRequests:
        wait = math.ceil(self.retry_after_s or 1.0)
        exc = TooManyRequests(
            f"Rate limit of {self.limit:g} images per second exceeded for this key. Retry in {wait} s.", wait
        )
        exc.headers.update(self.headers())
        return exc


def shape(rate: float) -> tuple[int, float, int]:
    """(microseconds per token, bucket size in tokens, a full bucket in microseconds) for `rate` tokens/s (clamped
    to [MIN_RATE, MAX_RATE]; NaN as MIN_RATE: a key stored before rates were checked still gets a usable bucket)."""
    rate = min(rate, MAX_RATE) if rate >= MIN_RATE else MIN_RATE  # NaN compares False: the strictest rate
    interval = max(1, round(US / rate))
    capacity = max(rate, 1.0)
    return interval, capacity, round(capacity * interval)


def quota(allowed: bool, base_us: int, new_us: int, rate: float) -> Quota:
    """The quota from one GCRA step: `base_us` = max(TAT, now) - now, `new_us` = that plus the cost."""
    interval, capacity, tolerance = shape(rate)
    if not allowed:
        return Quota(capacity, (tolerance - base_us) // interval, base_us / US, (new_us - tolerance) / US)
    return Quota(capacity, (tolerance - new_us) // interval, new_us / US)


def gcra(tat_us: int, now_us: int, rate: float, cost: int, force: bool) -> tuple[bool, int, Quota]:
    """(allowed, new TAT, quota). `force` takes the tokens even past the limit (extra images of an admitted request).

    Mirrored line by line by GCRA_LUA (below)."""
    interval, _, tolerance = shape(rate)
    base = max(tat_us, now_us)
    new_tat = base + cost * interval
    allowed = force or new_tat - now_us <= tolerance
    return allowed, new_tat if allowed else tat_us, quota(allowed, base - now_us, new_tat - now_us, rate)


# The same arithmetic as `gcra`, as the Lua script Redis runs (gateway/keys/redis_store.py), on Redis' clock so every
# replica agrees. KEYS[1]: the bucket; ARGV: microseconds per token, full bucket in microseconds, cost, force (1/0).
# Returns allowed, base - now, new - now.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local base = math.max(tat, now)
local new_tat = base + tonumber(ARGV[3]) * interval
if ARGV[4] ~= '1' and new_tat - now > tolerance then
  return {0, base - now, new_tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, base - now, new_tat - now}
"""


@dataclass
class RateLimiter:
    """In-process limiter (embedded state, and Redis mode's fallback while Redis is unreachable)."""

    _tats: dict[str, int] = field(default_factory=dict)  # key id -> TAT in microseconds

    def spend(self, key_id: str, rate: float | None, cost: int = 1, force: bool = False) -> Quota | None:
        """Take `cost` tokens; the quota left (None: unlimited key). Raises TooManyRequests (with the headers)."""
        if not rate or rate <= 0 or cost <= 0:
            return None
        now = time.monotonic_ns() // 1000
        allowed, tat, quota = gcra(self._tats.get(key_id, now), now, rate, cost, force)
        if not allowed:
            raise quota.refuse()
        self._tats[key_id] = tat
        if len(self._tats) > 100_000:  # forget keys whose buckets are full again (bounded memory)
            self._tats = {k: v for k, v in self._tats.items() if v > now}
        return quota


@dataclass
class KeySlots:
    """Each key's prediction requests in progress in this process, at most `limit` at once, from the moment the key
    is checked (before the body is read) until the answer is sent. Counted per process, like the in-flight slots it
    protects: each gateway replica holds its own."""

    limit: int
    _held: dict[str, int] = field(default_factory=dict)

    def claim(self, key_id: str) -> None:
        """One slot for the key, or TooManyRequests (429) naming the cap."""
        held = self._held.get(key_id, 0)
        if held >= self.limit:
            raise TooManyRequests(
                f"At most {self.limit} requests of one API key are processed at once on this server, and this key has "
                f"{held} in progress. Wait for one to finish, then retry.",
                1,
            )
        self._held[key_id] = held + 1

    def release(self, key_id: str) -> None:
        left = self._held.get(key_id, 0) - 1
        if left > 0:
            self._held[key_id] = left
        else:
            self._held.pop(key_id, None)
