"""Keys, rate limits and usage in Redis, shared by every gateway replica (selected by GATEWAY_REDIS_URL).

Layout (all under the `yt:` prefix):
    yt:keys                 set of key ids
    yt:key:<id>             hash: name, hash (SHA-256 of the key), created, models, rate, admin, revoked, last_used,
                            dialect
    yt:rl:<id>              the key's GCRA theoretical arrival time (microseconds, Redis' clock), expires when full
    yt:usage:<id>:<day>     hash: "<model>|<counter>" -> count (requests, images, status:<code>, lat:<bound ms>)
    channel yt:keys         a key id, published when that key is created or revoked

Decisions (README, "Scaling out"): every call is bounded (`timeout_s`); a failed call opens a breaker for half a
second so requests don't queue behind a dead Redis. While Redis is unreachable, a key checked in the last `grace_s`
seconds keeps working from this replica's cache, an unknown key gets 503 (not 401: we can't tell), rate limits fall
back to this replica's own buckets, and usage is kept here and written when Redis returns.

Key ids nobody created (a flood of random ones) must neither hammer Redis nor crowd out real keys. Each replica keeps
the set of every key id in Redis (loaded when its listener subscribes, kept current by the channel, ~100 bytes per
key): a key whose id is in it is looked up at once. Any other id is looked up only within a budget of MISS_RATE per
second per replica and MISS_RATE_PER_CLIENT per client address (per /64 for IPv6); past either, the answer is 503
with Retry-After (not 401: without asking Redis we can't tell a key created a moment ago on another replica from a
made-up one). A 401 is only ever given for an id Redis itself said it does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.keys.auth import KeyDraft, KeyEntry, drafts, ids_taken, key_id_of, missing_key, verify
from gateway.keys.ratelimit import GCRA_LUA, Quota, RateLimiter, quota, shape
from gateway.keys.usage import UsageBook, last_days, usage_rows
from gateway.observability import client_address
from gateway.redis_client import redis_client
from gateway.settings import Settings

log = logging.getLogger("gateway")
T = TypeVar("T")
NS = "yt:"
CHANNEL = "yt:keys"
BREAKER_S = 0.5  # after a failed call, skip Redis this long (then the next call probes it)
FLUSH_S = 0.5  # usage is written in batches this often
USAGE_TTL_S = 400 * 86400  # a day's usage is kept about 13 months
MISS_RATE = 100.0  # look-ups per second of key ids not in this replica's set of known ids (bounds what a flood costs)
MISS_RATE_PER_CLIENT = 10.0  # ... and per client address, so one flooding client leaves the rest of that budget

# Store a new key unless its id is taken (KEYS: the key's hash, the id set; ARGV: id, then field, value pairs).
CREATE_LUA = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PUBLISH', '%s', ARGV[1])
return 1
"""
    % CHANNEL
)


class StoreDown(Exception):
    """Redis did not answer in time (or refused); callers fall back as the module docstring says."""


def _entry_fields(e: KeyEntry) -> dict[Any, Any]:
    return {
        "id": e.id,
        "name": e.name,
        "hash": e.hash,
        "created": e.created,
        "models": json.dumps(list(e.models)) if e.models is not None else "",
        "rate": f"{e.rate:g}" if e.rate else "",
        "admin": "1" if e.admin else "0",
        "revoked": "1" if e.revoked else "0",
        "dialect": e.dialect or "",
    }


def _parse_entry(raw: Mapping[Any, Any]) -> KeyEntry | None:
    if not raw.get("hash") or not raw.get("id"):
        return None
    models = json.loads(raw["models"]) if raw.get("models") else None
    return KeyEntry(
        id=raw["id"],
        name=raw.get("name", ""),
        hash=raw["hash"],
        created=raw.get("created", ""),
        models=tuple(models) if models is not None else None,
        rate=float(raw["rate"]) if raw.get("rate") else None,
        revoked=raw.get("revoked") == "1",
        admin=raw.get("admin") == "1",
        last_used=raw.get("last_used") or None,
        dialect=raw.get("dialect") or None,
    )


@dataclass
class RedisStore:
    url: str
    password: str = field(default="", repr=False)
    timeout_s: float = 0.25
    cache_s: float = 1.0  # a cached key is re-read after this long: the revocation bound even without pub/sub
    grace_s: float = 60.0  # while Redis is unreachable, keys checked this recently keep working
    kind: str = "redis"
    redis: Redis = field(init=False, repr=False)
    _cache: dict[str, tuple[KeyEntry | None, float]] = field(default_factory=dict, init=False, repr=False)
    _known: set[str] | None = field(default=None, init=False, repr=False)  # every id in Redis; None: not loaded yet
    _misses: RateLimiter = field(default_factory=RateLimiter, init=False, repr=False)
    _local: RateLimiter = field(default_factory=RateLimiter, init=False, repr=False)
    _pending: UsageBook = field(default_factory=UsageBook, init=False, repr=False)
    _down_until: float = field(default=0.0, init=False, repr=False)
    _down_logged: bool = field(default=False, init=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)
    _flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # one immediate retry: a pooled connection left dead by a Redis restart
        self.redis = redis_client(self.url, self.password, self.timeout_s, retries=1)
        self._gcra = self.redis.register_script(GCRA_LUA)
        self._create = self.redis.register_script(CREATE_LUA)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        return cls(settings.redis_url, settings.redis_password, settings.redis_timeout_s)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the invalidation listener and the usage writer (Redis need not be up yet)."""
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._flush_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(StoreDown):
            await self.flush()
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self.redis.ping()))
        except StoreDown:
            return False

    async def _call(self, make: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        """One Redis call, bounded; StoreDown when Redis fails (and for BREAKER_S after, without trying)."""
        if time.monotonic() < self._down_until:
            raise StoreDown("breaker open")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s * 2 + 0.1):
                result = await make()
        except ResponseError as exc:  # Redis answered, refusing this command only: no reason to stop using it
            raise StoreDown(str(exc)) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + BREAKER_S
            if not self._down_logged:
                self._down_logged = True
                log.warning("redis unreachable (%s): %s; serving from this replica's cache", type(exc).__name__, exc)
            raise StoreDown(str(exc)) from exc
        if self._down_logged:
            self._down_logged = False
            log.warning("redis reachable again")
        return result

    # -- request path ----------------------------------------------------------------------------------------

    async def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        if not key:
            raise missing_key()
        key_id = key_id_of(key)
        return verify(await self._entry(key_id) if key_id else None, key, model_id, header)

    async def _entry(self, key_id: str) -> KeyEntry | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self.cache_s:
            return cached[0]
        if self._known is None or key_id not in self._known:
            self._admit_unknown()
        try:
            raw = await self._call(lambda: self.redis.hgetall(f"{NS}key:{key_id}"))
        except StoreDown:
            if cached is not None and cached[0] is not None and now - cached[1] < self.grace_s:
                return cached[0]
            raise ServiceUnavailable(
                "The key store is unreachable, so this API key cannot be checked right now. Retry in a few seconds.", 2
            ) from None
        entry = _parse_entry(raw)
        if entry is not None and self._known is not None:
            self._known.add(key_id)  # created while the channel was away: known from now on
        if len(self._cache) > 100_000:
            self._cache = {k: v for k, v in self._cache.items() if now - v[1] < self.cache_s}
        self._cache[key_id] = (entry, now)
        return entry

    def _admit_unknown(self) -> None:
        """Spend one look-up of an id this replica does not know, or ServiceUnavailable when the budgets are spent."""
        try:
            self._misses.spend(f"client:{_client_bucket(client_address())}", MISS_RATE_PER_CLIENT)
            self._misses.spend("replica", MISS_RATE)
        except TooManyRequests:
            raise ServiceUnavailable(
                "Too many unknown API keys were sent to this gateway in the last second, so this key can't be checked "
                "right now. Retry in a second.",
                1,
            ) from None

    async def spend(self, entry: KeyEntry, cost: int = 1, force: bool = False) -> Quota | None:
        if not entry.rate or entry.rate <= 0 or cost <= 0:
            return None
        interval, _, tolerance = shape(entry.rate)
        rate = entry.rate
        try:
            allowed, base, new = await self._call(
                lambda: self._gcra(keys=[f"{NS}rl:{entry.id}"], args=[interval, tolerance, cost, int(force)])
            )
        except StoreDown:
            return self._local.spend(entry.id, rate, cost, force)
        q = quota(bool(allowed), int(base), int(new), rate)
        if not allowed:
            raise q.refuse()
        return q

    def record(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        self._pending.add(key_id, model, images, status, seconds)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            with contextlib.suppress(StoreDown):
                await self.flush()

    async def flush(self) -> None:
        """Write the usage counted since the last flush (kept for the next one if Redis fails)."""
        async with self._flush_lock:
            book, self._pending = self._pending, UsageBook()
            if not book.counters and not book.last_used:
                return
            pipe = self.redis.pipeline(transaction=False)
            for (key_id, day, model), counters in book.counters.items():
                name = f"{NS}usage:{key_id}:{day}"
                for counter, value in counters.items():
                    pipe.hincrby(name, f"{model}|{counter}", value)
                pipe.expire(name, USAGE_TTL_S)
            for key_id, when in book.last_used.items():
                pipe.hset(f"{NS}key:{key_id}", "last_used", when)
            try:
                await self._call(lambda: pipe.execute(), timeout_s=5.0)
            except StoreDown:
                self._pending.merge(book)
                raise

    async def _listen(self) -> None:
        """Drop a key from the cache as soon as any replica creates or revokes it (pub/sub), and keep the set of known
        ids (loaded after each subscription, so no creation falls between the two); reconnects forever."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(CHANNEL), 2.0)
                self._known = await asyncio.wait_for(self._known_ids(), 30.0)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and message.get("type") == "message":
                        key_id = str(message["data"])
                        self._cache.pop(key_id, None)
                        if self._known is not None:
                            self._known.add(key_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - any failure: reconnect; the 1 s cache bounds what we may miss
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)

    async def _known_ids(self) -> set[str]:
        """Every key id in Redis (SSCAN in pages: a large set never blocks Redis for long)."""
        return {str(key_id) async for key_id in self.redis.sscan_iter(f"{NS}keys", count=1000)}

    # -- key management (admin API, CLI) ----------------------------------------------------------------------

    async def create_key(self, draft: KeyDraft) -> tuple[KeyEntry, str]:
        for entry, key in drafts(draft):
            fields = [item for pair in _entry_fields(entry).items() for item in pair]
            keys = [f"{NS}key:{entry.id}", f"{NS}keys"]
            if await self._admin_call(lambda: self._create(keys=keys, args=[entry.id, *fields])):
                self._cache.pop(entry.id, None)
                return entry, key
        raise ids_taken()

    async def put_entry(self, entry: KeyEntry) -> None:
        """Store an entry as it is (import from a keys file, which skips ids already there) and tell every replica."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{NS}key:{entry.id}", mapping=_entry_fields(entry))
        pipe.sadd(f"{NS}keys", entry.id)
        pipe.publish(CHANNEL, entry.id)
        await self._admin_call(lambda: pipe.execute())
        self._cache.pop(entry.id, None)

    async def get_key(self, key_id: str) -> KeyEntry | None:
        return _parse_entry(await self._admin_call(lambda: self.redis.hgetall(f"{NS}key:{key_id}")))

    async def list_keys(self) -> list[KeyEntry]:
        ids = sorted(str(i) for i in await self._admin_call(lambda: self.redis.smembers(f"{NS}keys")))
        pipe = self.redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(f"{NS}key:{key_id}")
        rows = await self._admin_call(lambda: pipe.execute()) if ids else []
        entries = [e for e in (_parse_entry(r) for r in rows) if e is not None]
        return sorted(entries, key=lambda e: (e.created, e.id))

    async def revoke_key(self, key_id: str) -> KeyEntry | None:
        entry = await self.get_key(key_id)
        if entry is None:
            return None
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{NS}key:{key_id}", "revoked", "1")
        pipe.publish(CHANNEL, key_id)
        await self._admin_call(lambda: pipe.execute())
        self._cache.pop(key_id, None)
        return replace(entry, revoked=True)

    async def usage(self, key_id: str, days: int = 7) -> list[dict[str, Any]]:
        with contextlib.suppress(StoreDown):
            await self.flush()
        names = last_days(days)
        pipe = self.redis.pipeline(transaction=False)
        for day in names:
            pipe.hgetall(f"{NS}usage:{key_id}:{day}")
        hashes = await self._admin_call(lambda: pipe.execute())
        counters: dict[tuple[str, str], dict[str, int]] = {}
        for day, raw in zip(names, hashes):
            for name, value in raw.items():
                model, _, counter = name.rpartition("|")
                counters.setdefault((day, model), {})[counter] = int(value)
        return usage_rows(counters)

    async def _admin_call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._call(make, timeout_s=max(2.0, self.timeout_s * 4))
        except StoreDown:
            raise ServiceUnavailable("The key store (Redis) is unreachable. Retry in a few seconds.", 2) from None


def _client_bucket(address: str) -> str:
    """The budget a client address draws from: the address itself, or its /64 for IPv6 (one host holds a whole /64,
    so per-address budgets alone would give it 2^64 of them)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped or ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
