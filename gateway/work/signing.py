"""Webhook signatures (the Standard Webhooks scheme) and each key's signing secret.

Every delivery carries three headers: `webhook-id` (unique per message; the same on its retries),
`webhook-timestamp` (Unix seconds when it was signed) and `webhook-signature: v1,<base64 HMAC-SHA256>` of
`<id>.<timestamp>.<body>` under the key's secret. A receiver verifies (constant-time) with `verify` below or any
Standard Webhooks library, and refuses timestamps more than TOLERANCE_S away from its clock (replays).

A secret reads `whsec_<base64 of 24 random bytes>`; the HMAC key is the decoded bytes. One per API key, made the
first time the key asks for a webhook (shown in that answer) or by `POST /v1/webhooks/secret` (rotates; shown once).

Where secrets live (this module owns them): with Redis, the hash `yt:work:webhook-secrets` (key id -> secret);
otherwise `webhook-secrets.json` beside the keys file (mode 0600, changed under the keys file's kind of lock), so
they survive a restart in both modes. Secrets are kept in full (not hashed): the gateway must sign with them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from redis.asyncio import Redis

from gateway.keys.auth import locked
from gateway.redis_client import redis_client

PREFIX = "whsec_"
TOLERANCE_S = 300
REDIS_HASH = "yt:work:webhook-secrets"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for one delivery."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def verify(secret: str, header: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """What a receiver does: the timestamp within TOLERANCE_S of now, and one of the listed signatures matching."""
    try:
        timestamp = int(header["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        return False
    expected = signature(secret, header.get("webhook-id", ""), timestamp, body)
    return any(hmac.compare_digest(expected, sent) for sent in header.get("webhook-signature", "").split())


@runtime_checkable
class Secrets(Protocol):
    async def get(self, key_id: str) -> str | None: ...

    async def ensure(self, key_id: str) -> tuple[str, bool]:
        """The key's secret, and whether it was made just now (then the caller shows it)."""
        ...

    async def rotate(self, key_id: str) -> str: ...

    async def close(self) -> None: ...


class FileSecrets:
    """Secrets in a JSON file beside the keys file (see the module docstring)."""

    def __init__(self, keys_file: Path) -> None:
        self.path = keys_file.with_name("webhook-secrets.json")

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text() or "{}")
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".webhook-secrets.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _change(self, key_id: str, replace: bool) -> tuple[str, bool]:
        with locked(self.path):
            data = self._read()
            if key_id in data and not replace:
                return data[key_id], False
            data[key_id] = new_secret()
            self._write(data)
            return data[key_id], True

    async def get(self, key_id: str) -> str | None:
        return (await asyncio.to_thread(self._read)).get(key_id)

    async def ensure(self, key_id: str) -> tuple[str, bool]:
        return await asyncio.to_thread(self._change, key_id, False)

    async def rotate(self, key_id: str) -> str:
        return (await asyncio.to_thread(self._change, key_id, True))[0]

    async def close(self) -> None:
        return None


class RedisSecrets:
    """Secrets in the Redis hash REDIS_HASH."""

    def __init__(self, url: str, password: str = "", timeout_s: float = 1.0) -> None:
        self._redis: Redis = redis_client(url, password, max(timeout_s, 1.0))

    async def get(self, key_id: str) -> str | None:
        found = await self._redis.hget(REDIS_HASH, key_id)
        return None if found is None else str(found)

    async def ensure(self, key_id: str) -> tuple[str, bool]:
        made = new_secret()
        if await self._redis.hsetnx(REDIS_HASH, key_id, made):
            return made, True
        return await self.get(key_id) or made, False

    async def rotate(self, key_id: str) -> str:
        made = new_secret()
        await self._redis.hset(REDIS_HASH, key_id, made)
        return made

    async def close(self) -> None:
        await self._redis.aclose()
