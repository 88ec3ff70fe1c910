"""The registry in Redis (selected when GATEWAY_REDIS_URL is set), shared by every gateway and export worker.

Layout (under the `yt:` prefix the keys and limits use, gateway/keys/redis_store.py):

    yt:model:<id>     string: the model's record as JSON (`ModelRecord.to_json`)
    yt:models         set of every model id that has a record
    channel yt:models an id, published after every change to its record (gateways drop their cached alias at once)

Every change is an optimistic transaction: WATCH the record, read it, compute the new one, then MULTI/EXEC the write
with the set and the publish; when another writer changed the record in between, EXEC fails and the change is computed
again from what is stored now, so two writers never lose an update. Calls are bounded by `timeout_s`; Redis errors
surface as RegistryUnavailable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway.models.record import ModelRecord, RegistryError
from gateway.models.registry import Change, Registry
from gateway.redis_client import redis_client

PREFIX = "yt:model:"
IDS = "yt:models"
CHANNEL = "yt:models"
RETRIES = 50  # optimistic retries under contention before giving up (each retry means another writer made progress)


class RegistryUnavailable(RegistryError):
    """Redis did not answer in time or refused; nothing was written."""


@dataclass
class RedisRegistry(Registry):
    url: str
    password: str = field(default="", repr=False)
    timeout_s: float = 2.0
    redis: Redis = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.url, self.password, self.timeout_s)

    async def close(self) -> None:
        await self.redis.aclose()

    async def get(self, model_id: str) -> ModelRecord | None:
        try:
            raw = await self.redis.get(PREFIX + model_id)
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"the model registry (Redis) is unreachable: {exc}") from exc
        return None if raw is None else ModelRecord.from_json(json.loads(raw))

    async def list(self) -> list[ModelRecord]:
        try:
            ids = sorted(str(i) for i in await self.redis.smembers(IDS))
            raws = await self.redis.mget([PREFIX + i for i in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"the model registry (Redis) is unreachable: {exc}") from exc
        return [ModelRecord.from_json(json.loads(r)) for r in raws if r is not None]

    async def _update(self, model_id: str, change: Change) -> ModelRecord | None:
        key = PREFIX + model_id
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for _ in range(RETRIES):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        before = None if raw is None else ModelRecord.from_json(json.loads(raw))
                        after = change(before)
                        if after is before:
                            await pipe.unwatch()  # type: ignore[no-untyped-call]
                            return before
                        pipe.multi()  # type: ignore[no-untyped-call]
                        if after is None:
                            pipe.delete(key)
                            pipe.srem(IDS, model_id)
                        else:
                            pipe.set(key, json.dumps(after.to_json(), sort_keys=True))
                            pipe.sadd(IDS, model_id)
                        pipe.publish(CHANNEL, model_id)
                        await pipe.execute()
                        return after
                    except WatchError:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        continue
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"the model registry (Redis) is unreachable: {exc}") from exc
        raise RegistryUnavailable(f"model '{model_id}': {RETRIES} concurrent writers in a row; try again")

    async def changes(self) -> AsyncIterator[str]:
        """The ids whose records change, as they change (for as long as the caller iterates). Messages sent while not
        subscribed are lost: callers also re-read on their own schedule."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    yield str(message["data"])
                else:
                    await asyncio.sleep(0)
        finally:
            await pubsub.aclose()
