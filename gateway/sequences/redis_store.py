"""Sequences in Redis (selected by GATEWAY_REDIS_URL), shared by every gateway replica: the frames of one sequence may
reach different replicas, each continuing the tracks where the previous frame left them.

Layout (under the `yt:` prefix of the keys, limits and registry):
    yt:seq:<key id>:<name>   hash: frame (frames tracked so far), state (gateway/tracking/codec.py bytes); expires
                             GATEWAY_SEQUENCE_TTL_S after its last write
    yt:seqs:<key id>         sorted set: the key's sequence names, each scored by when it expires (ms, Redis' clock);
                             it counts the key's live sequences against GATEWAY_MAX_SEQUENCES_PER_KEY, and expires
                             with its newest member

Key ids are hexadecimal, so the first ':' after `yt:seq:` ends the id: no name makes one key's entry another's.
Both scripts run on Redis' clock and are atomic there: WRITE is the compare-and-set on the frame counter, and takes a
place under the cap in the same step. Every call is bounded by GATEWAY_REDIS_TIMEOUT_S (twice, plus 0.1 s); a failed
call keeps this replica off Redis for BREAKER_S, and tracking requests get 503 meanwhile (plain predictions don't
use this store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.redis_client import redis_client
from gateway.sequences.store import Stored, conflict, too_many, unreachable
from gateway.settings import Settings

log = logging.getLogger("gateway")
T = TypeVar("T")
NS = "yt:"
BREAKER_S = 0.5

# KEYS: the sequence, the key's index. Returns {frame, state} for a live sequence, else
# {0, '', live sequences of the key} (expired names dropped from the index first).
READ_LUA = """
local got = redis.call('HMGET', KEYS[1], 'frame', 'state')
if got[1] then
  return {tonumber(got[1]), got[2]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {0, '', redis.call('ZCARD', KEYS[2])}
"""

# KEYS: the sequence, the key's index; ARGV: expected frame, state, ttl (ms), cap, name.
# Returns {1, new frame}; {0, stored frame} when the counter moved on; {-1, live sequences} at the cap.
WRITE_LUA = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'frame') or '0')
if stored ~= tonumber(ARGV[1]) then
  return {0, stored}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if stored == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local live = redis.call('ZCARD', KEYS[2])
  if not redis.call('ZSCORE', KEYS[2], ARGV[5]) and live >= tonumber(ARGV[4]) then
    return {-1, live}
  end
end
redis.call('HSET', KEYS[1], 'frame', stored + 1, 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, stored + 1}
"""


def keys_of(key_id: str, name: str) -> list[str]:
    """The sequence's hash and its key's index (the layout in the module docstring)."""
    return [f"{NS}seq:{key_id}:{name}", f"{NS}seqs:{key_id}"]


@dataclass
class RedisSequences:
    url: str
    password: str = field(default="", repr=False)
    timeout_s: float = 0.25
    ttl_s: float = 60.0
    cap: int = 100
    kind: str = "redis"
    redis: Redis = field(init=False, repr=False)
    _down_until: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.url, self.password, self.timeout_s, text=False)  # the state is bytes
        self._read = self.redis.register_script(READ_LUA)
        self._write = self.redis.register_script(WRITE_LUA)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSequences:
        return cls(
            settings.redis_url,
            settings.redis_password,
            settings.redis_timeout_s,
            settings.sequence_ttl_s,
            settings.max_sequences_per_key,
        )

    async def read(self, key_id: str, name: str) -> Stored:
        got: list[Any] = await self._call(lambda: self._read(keys=keys_of(key_id, name)))
        if int(got[0]) > 0:
            return Stored(int(got[0]), bytes(got[1]))
        if int(got[2]) >= self.cap:
            raise too_many(self.cap, self.ttl_s)
        return Stored()

    async def write(self, key_id: str, name: str, frame: int, state: bytes) -> int:
        ttl_ms = max(1, round(self.ttl_s * 1000))
        args: list[bytes | str | int] = [frame, state, ttl_ms, self.cap, name]
        done, value = await self._call(lambda: self._write(keys=keys_of(key_id, name), args=args))
        if int(done) == 0:
            raise conflict(name, self.ttl_s)
        if int(done) < 0:
            raise too_many(self.cap, self.ttl_s)
        return int(value)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One bounded Redis call; ServiceUnavailable when Redis fails (and for BREAKER_S after, without trying)."""
        if time.monotonic() < self._down_until:
            raise unreachable()
        try:
            async with asyncio.timeout(self.timeout_s * 2 + 0.1):
                return await make()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + BREAKER_S
            log.warning("redis unreachable for sequences (%s): %s", type(exc).__name__, exc)
            raise unreachable() from None
