"""Shared state of the gateway: API keys, rate limits and usage, behind one interface with two implementations.

- `EmbeddedState` (default): the hashed keys file (gateway/auth.py), in-process GCRA buckets, usage counted in
  the process. Right for one gateway process.
- `RedisState` (gateway/redis_state.py, when GATEWAY_REDIS_URL is set): keys, limits and usage in Redis, shared
  by every gateway replica.

Nothing else in the gateway knows which one is in use: routes call `authenticate`, `take` and `record`, the admin
API and the `keys` CLI call the key-management methods. `open_state(settings)` picks the implementation.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.auth import KeyEntry, KeyStore, create_key, read_entries, update_entries
from gateway.metrics import LATENCY_BUCKETS
from gateway.ratelimit import Quota, RateLimiter
from gateway.settings import Settings

BUCKETS_MS = tuple(round(b * 1000) for b in LATENCY_BUCKETS)  # latency histogram bounds per key, model and day


class State(Protocol):
    """What the gateway needs from its state store (see the module docstring)."""

    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        """The key's entry, or Unauthorized (401) / Forbidden (403) / ServiceUnavailable (503, store unreachable)."""
        ...

    async def take(self, entry: KeyEntry, cost: int = 1, force: bool = False) -> Quota | None:
        """Take `cost` tokens from the key's limit (None: unlimited), or raise TooManyRequests. `force`: go into
        debt instead of refusing (extra images of a request that was admitted)."""
        ...

    def record(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        """Count one finished prediction request (never blocks, never raises)."""
        ...

    async def create_key(
        self, name: str, models: list[str] | None = None, rate: float | None = None, admin: bool = False
    ) -> tuple[KeyEntry, str]: ...

    async def list_keys(self) -> list[KeyEntry]: ...

    async def get_key(self, key_id: str) -> KeyEntry | None: ...

    async def revoke_key(self, key_id: str) -> KeyEntry | None:
        """The revoked entry, or None when there is no such key."""
        ...

    async def usage(self, key_id: str, days: int = 7) -> list[dict[str, Any]]:
        """Per day and model: requests, images, errors by status, latency histogram and p95 (newest day first)."""
        ...


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def bucket_of(seconds: float) -> str:
    """The histogram field a latency falls in: the smallest bound >= it, in ms ("inf" past the last)."""
    ms = seconds * 1000
    for bound in BUCKETS_MS:
        if ms <= bound:
            return str(bound)
    return "inf"


def usage_fields(images: int, status: int, seconds: float) -> dict[str, int]:
    """The counters one request adds: requests, images (answered 200), errors by status, latency bucket (200s)."""
    if status == 200:
        return {"requests": 1, "images": images, f"lat:{bucket_of(seconds)}": 1}
    return {"requests": 1, f"status:{status}": 1}


def usage_rows(counters: dict[tuple[str, str], dict[str, int]]) -> list[dict[str, Any]]:
    """(day, model) -> counters  →  the rows the admin API and CLI show, newest day first."""
    rows = []
    for (day, model), c in sorted(counters.items(), key=lambda kv: (kv[0][0], kv[0][1]), reverse=True):
        buckets = {k.removeprefix("lat:"): v for k, v in c.items() if k.startswith("lat:")}
        ordered = [(str(b), buckets.get(str(b), 0)) for b in BUCKETS_MS] + [("inf", buckets.get("inf", 0))]
        rows.append(
            {
                "day": day,
                "model": model,
                "requests": c.get("requests", 0),
                "images": c.get("images", 0),
                "errors": {k.removeprefix("status:"): v for k, v in sorted(c.items()) if k.startswith("status:")},
                "latency_ms": {
                    "buckets": {b: n for b, n in ordered if n},
                    "p50": _quantile(ordered, 0.5),
                    "p95": _quantile(ordered, 0.95),
                },
            }
        )
    return rows


def _quantile(ordered: list[tuple[str, int]], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding the q-quantile; None without samples (inf: past the last bound)."""
    total = sum(n for _, n in ordered)
    if not total:
        return None
    seen = 0
    for bound, n in ordered:
        seen += n
        if seen >= q * total:
            return float(bound) if bound != "inf" else float("inf")
    return float("inf")


@dataclass
class UsageBook:
    """Usage counters kept in the process: (key id, day, model) -> counter -> value, and last use per key."""

    counters: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    last_used: dict[str, str] = field(default_factory=dict)

    def add(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        row = self.counters[(key_id, today(), model[:64] or "-")]
        for name, value in usage_fields(images, status, seconds).items():
            row[name] = row.get(name, 0) + value
        self.last_used[key_id] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def merge(self, other: UsageBook) -> None:
        """Add `other`'s counts back (a flush that failed)."""
        for where, row in other.counters.items():
            mine = self.counters[where]
            for name, value in row.items():
                mine[name] = mine.get(name, 0) + value
        for key_id, when in other.last_used.items():
            self.last_used.setdefault(key_id, when)

    def rows(self, key_id: str, days: int) -> list[dict[str, Any]]:
        keep = set(last_days(days))
        return usage_rows({(d, m): c for (k, d, m), c in self.counters.items() if k == key_id and d in keep})


def last_days(days: int) -> list[str]:
    now = time.time()
    return [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * i)) for i in range(max(1, days))]


@dataclass
class EmbeddedState:
    """The default: the keys file, in-process buckets, usage in memory (since the process started)."""

    keys_file: Path
    kind: str = "file"
    _keys: KeyStore = field(init=False)
    _limiter: RateLimiter = field(default_factory=RateLimiter, init=False)
    _usage: UsageBook = field(default_factory=UsageBook, init=False)

    def __post_init__(self) -> None:
        self._keys = KeyStore(self.keys_file)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        return self._keys.authenticate(key, model_id, header)

    async def take(self, entry: KeyEntry, cost: int = 1, force: bool = False) -> Quota | None:
        return self._limiter.take(entry.id, entry.rate, cost, force)

    def record(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        self._usage.add(key_id, model, images, status, seconds)

    async def create_key(
        self, name: str, models: list[str] | None = None, rate: float | None = None, admin: bool = False
    ) -> tuple[KeyEntry, str]:
        # in a thread: the file's lock may be held for a moment by the CLI or another gateway process
        return await asyncio.to_thread(create_key, self.keys_file, name, models, rate, admin)

    async def list_keys(self) -> list[KeyEntry]:
        return [replace(e, last_used=self._usage.last_used.get(e.id)) for e in read_entries(self.keys_file)]

    async def get_key(self, key_id: str) -> KeyEntry | None:
        return next((e for e in await self.list_keys() if e.id == key_id), None)

    async def revoke_key(self, key_id: str) -> KeyEntry | None:
        entries = await asyncio.to_thread(revoke_in_file, self.keys_file, key_id)
        found = next((e for e in entries if e.id == key_id), None)
        if found is not None:
            self._keys.reload()  # this process refuses it at once; others re-read the file within a second
        return found

    async def usage(self, key_id: str, days: int = 7) -> list[dict[str, Any]]:
        return self._usage.rows(key_id, days)


def revoke_in_file(path: Path, key_id: str) -> list[KeyEntry]:
    """Mark the key revoked in the keys file (under its lock); the entries now in the file (unchanged without it)."""
    return update_entries(path, lambda entries: [replace(e, revoked=True) if e.id == key_id else e for e in entries])


def open_state(settings: Settings) -> State:
    """Redis when GATEWAY_REDIS_URL is set, else the keys file."""
    if settings.redis_url:
        from gateway.redis_state import RedisState

        return RedisState.from_settings(settings)
    return EmbeddedState(settings.keys_file)
