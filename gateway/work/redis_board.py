"""The board in Redis, shared by every replica (gateway/work/board.py has the protocol and the key layout).

Every check-and-write is one Lua script, so two replicas never both own a record, and a write from an owner whose
lease lapsed is refused by Redis itself (the fencing check). Calls are bounded by GATEWAY_REDIS_TIMEOUT_S like the
key store's, but never below a second: these calls are not on a prediction's path, and a lease loop that gives up
on a slow Redis stops its streams.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from redis.asyncio import Redis

from gateway.redis_client import redis_client
from gateway.work.board import EVENTS_KEPT, TICK_S, Event, Fields, Lease

NS = "yt:work:"

CREATE_LUA = """
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('SCARD', KEYS[3]) >= limit then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""
# KEYS: record, active, lease, fence; ARGV: id, owner, ttl ms. Returns the token, or 0.
ACQUIRE_LUA = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'stop') or redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. token, 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'token', token)
return token
"""
# KEYS: lease, record; ARGV: value, ttl ms. Returns {held, stop}.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, 0}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return {0, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'stop') then
  return {1, 1}
end
return {1, 0}
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""
# KEYS: lease, record; ARGV: value, field/value pairs.
WRITE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
# KEYS: lease, record, log; ARGV: lease value, message, events kept. Returns the event's number, or 0. The log's
# entry ids are "<number>-0": a follower reads on from the number it saw last, on any replica, after any takeover.
PUBLISH_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
local number = redis.call('HINCRBY', KEYS[2], 'last_event', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], number .. '-0', 'data', ARGV[2])
return number
"""
READ_COUNT = 100  # log entries one XREAD returns at most
END_KEPT_MS = 10_000  # a removed stream's log keeps only an end mark, this long: its followers end at once
UPDATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# KEYS: record, active, key's set, done, key's done, lease; ARGV: id, lease value ("" = none), field/value pairs.
RETIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[6]) ~= ARGV[2] or redis.call('HGET', KEYS[1], 'stop') then
    return 0
  end
  redis.call('DEL', KEYS[6])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
return 1
"""


def _name(kind: str, part: str, id: str = "") -> str:
    return f"{NS}{kind}:{part}:{id}" if id else f"{NS}{kind}:{part}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(fields: Fields) -> list[str]:
    return [x for pair in fields.items() for x in pair]


class RedisBoard:
    """The board in Redis (see the module docstring)."""

    kind = "redis"

    def __init__(self, url: str, password: str = "", timeout_s: float = 1.0, events_kept: int = EVENTS_KEPT) -> None:
        self._timeout_s = max(timeout_s, 1.0)
        self._redis: Redis = redis_client(url, password, self._timeout_s, text=False)
        self.events_kept = events_kept

    async def close(self) -> None:
        await self._redis.aclose()

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._redis.eval(script, len(keys), *keys, *args)

    async def create(self, kind: str, id: str, key: str, fields: Fields, limit: int) -> bool:
        keys = [f"{NS}{kind}:{id}", _name(kind, "active"), _name(kind, "key", key)]
        return bool(await self._eval(CREATE_LUA, keys, [id, limit, *_pairs(fields)]))

    async def read(self, kind: str, id: str) -> dict[str, str] | None:
        raw: Mapping[Any, Any] = await self._redis.hgetall(f"{NS}{kind}:{id}")
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    async def active(self, kind: str, key: str | None = None) -> list[str]:
        name = _name(kind, "active") if key is None else _name(kind, "key", key)
        members: set[Any] = await self._redis.smembers(name)
        return sorted(_text(m) for m in members)

    async def update(self, kind: str, id: str, fields: Fields) -> bool:
        return bool(await self._eval(UPDATE_LUA, [f"{NS}{kind}:{id}"], _pairs(fields)))

    async def acquire(self, kind: str, id: str, owner: str, ttl_s: float) -> Lease | None:
        keys = [f"{NS}{kind}:{id}", _name(kind, "active"), _name(kind, "lease", id), _name(kind, "fence", id)]
        token = int(await self._eval(ACQUIRE_LUA, keys, [id, owner, int(ttl_s * 1000)]))
        return Lease(kind, id, owner, token) if token else None

    async def renew(self, lease: Lease, ttl_s: float) -> bool:
        keys = [_name(lease.kind, "lease", lease.id), f"{NS}{lease.kind}:{lease.id}"]
        held, stop = await self._eval(RENEW_LUA, keys, [lease.value, int(ttl_s * 1000)])
        lease.lost = not held
        lease.stop = bool(stop)
        return bool(held)

    async def release(self, lease: Lease) -> None:
        await self._eval(RELEASE_LUA, [_name(lease.kind, "lease", lease.id)], [lease.value])

    async def write(self, lease: Lease, fields: Fields) -> bool:
        keys = [_name(lease.kind, "lease", lease.id), f"{NS}{lease.kind}:{lease.id}"]
        return bool(await self._eval(WRITE_LUA, keys, [lease.value, *_pairs(fields)]))

    async def publish(self, lease: Lease, message: bytes) -> bool:
        keys = [
            _name(lease.kind, "lease", lease.id),
            f"{NS}{lease.kind}:{lease.id}",
            _name(lease.kind, "events", lease.id),
        ]
        return bool(await self._eval(PUBLISH_LUA, keys, [lease.value, message, self.events_kept]))

    async def remove(self, kind: str, id: str, key: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{NS}{kind}:{id}", *(_name(kind, part, id) for part in ("lease", "fence")))
            log = _name(kind, "events", id)
            pipe.xtrim(log, maxlen=0)  # its events go with it; the mark (a time id, above every number) ends reads
            pipe.xadd(log, {"end": "1"})
            pipe.pexpire(log, END_KEPT_MS)
            pipe.srem(_name(kind, "active"), id)
            pipe.srem(_name(kind, "key", key), id)
            pipe.srem(_name(kind, "done"), id)
            pipe.srem(_name(kind, "done", key), id)
            await pipe.execute()

    async def retire(self, kind: str, id: str, key: str, fields: Fields, lease: Lease | None = None) -> bool:
        keys = [f"{NS}{kind}:{id}", _name(kind, "active"), _name(kind, "key", key), _name(kind, "done"),
                _name(kind, "done", key), _name(kind, "lease", id)]  # fmt: skip
        value = lease.value if lease is not None else ""
        return bool(await self._eval(RETIRE_LUA, keys, [id, value, *_pairs(fields)]))

    async def finished(self, kind: str, key: str | None = None) -> list[str]:
        name = _name(kind, "done") if key is None else _name(kind, "done", key)
        members: set[Any] = await self._redis.smembers(name)
        return sorted(_text(m) for m in members)

    @contextlib.asynccontextmanager
    async def subscribe(self, kind: str, id: str, after: int) -> AsyncIterator[AsyncIterator[Event | None]]:
        log, record = _name(kind, "events", id), f"{NS}{kind}:{id}"
        block_s = min(TICK_S, self._timeout_s / 2)  # an XREAD BLOCK answers well within the socket's timeout

        async def events() -> AsyncIterator[Event | None]:
            position = after
            quiet_until = time.monotonic() + TICK_S
            while True:
                answer: Any = await self._redis.xread(
                    {log: f"{position}-0"}, count=READ_COUNT, block=int(block_s * 1000)
                )
                for _, entries in answer or ():
                    for entry, fields in entries:
                        if b"end" in fields:  # removed
                            return
                        position = int(_text(entry).split("-")[0])
                        yield Event(position, bytes(fields[b"data"]))
                if answer:
                    quiet_until = time.monotonic() + TICK_S
                elif time.monotonic() >= quiet_until:
                    if not await self._redis.exists(record):  # removed (and its end mark expired, or never read)
                        return
                    yield None
                    quiet_until = time.monotonic() + TICK_S

        yield events()
