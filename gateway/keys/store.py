"""The key store: API keys, rate limits and usage, behind one interface (`Store`) with two implementations.

- `FileStore` (default): the hashed keys file (gateway/keys/auth.py), in-process GCRA buckets, usage counted in
  the process. Right for one gateway process.
- `RedisStore` (gateway/keys/redis_store.py, when GATEWAY_REDIS_URL is set): keys, limits and usage in Redis, shared
  by every gateway replica.

Nothing else in the gateway knows which one is in use: routes call `authenticate`, `spend` and `record`, the admin
API and the `keys` CLI call the key-management methods. `open_store(settings)` picks the implementation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.keys.auth import KeyDraft, KeyEntry, KeysFile, create_key, read_entries, update_entries
from gateway.keys.ratelimit import Quota, RateLimiter
from gateway.keys.usage import UsageBook
from gateway.settings import Settings


class Store(Protocol):
    """What the gateway needs from its state store (see the module docstring)."""

    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        """The key's entry, or Unauthorized (401) / Forbidden (403) / ServiceUnavailable (503, store unreachable)."""
        ...

    async def spend(self, entry: KeyEntry, cost: int = 1, force: bool = False) -> Quota | None:
        """Take `cost` tokens from the key's limit (None: unlimited), or raise TooManyRequests. `force`: go into
        debt instead of refusing (extra images of a request that was admitted)."""
        ...

    def record(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        """Count one finished prediction request (never blocks, never raises)."""
        ...

    async def create_key(self, draft: KeyDraft) -> tuple[KeyEntry, str]:
        """Store a new key (its id drawn again while taken); the entry and the key itself (shown once, never stored)."""
        ...

    async def list_keys(self) -> list[KeyEntry]: ...

    async def get_key(self, key_id: str) -> KeyEntry | None: ...

    async def revoke_key(self, key_id: str) -> KeyEntry | None:
        """The revoked entry, or None when there is no such key."""
        ...

    async def usage(self, key_id: str, days: int = 7) -> list[dict[str, Any]]:
        """Per day and model: requests, images, errors by status, latency histogram and p95 (newest day first)."""
        ...


@dataclass
class FileStore:
    """The default: the keys file, in-process buckets, usage in memory (since the process started)."""

    keys_file: Path
    kind: str = "file"
    _keys: KeysFile = field(init=False)
    _limiter: RateLimiter = field(default_factory=RateLimiter, init=False)
    _usage: UsageBook = field(default_factory=UsageBook, init=False)

    def __post_init__(self) -> None:
        self._keys = KeysFile(self.keys_file)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        return self._keys.authenticate(key, model_id, header)

    async def spend(self, entry: KeyEntry, cost: int = 1, force: bool = False) -> Quota | None:
        return self._limiter.spend(entry.id, entry.rate, cost, force)

    def record(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        self._usage.add(key_id, model, images, status, seconds)

    async def create_key(self, draft: KeyDraft) -> tuple[KeyEntry, str]:
        # in a thread: the file's lock may be held for a moment by the CLI or another gateway process
        return await asyncio.to_thread(create_key, self.keys_file, draft)

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


def open_store(settings: Settings) -> Store:
    """Redis when GATEWAY_REDIS_URL is set, else the keys file."""
    if settings.redis_url:
        from gateway.keys.redis_store import RedisStore

        return RedisStore.from_settings(settings)
    return FileStore(settings.keys_file)
