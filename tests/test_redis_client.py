"""Every part of the gateway that keeps state in Redis gets its client from gateway/redis_client.py: the same
password, health checks and pool, each with the timeout it chose, against a real redis-server with a password."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from gateway.keys.redis_store import RedisStore
from gateway.models.redis_backend import RedisRegistry
from gateway.sequences.redis_store import RedisSequences
from gateway.work.redis_board import RedisBoard
from gateway.work.signing import RedisSecrets
from tritonlocal import redisserver


def test_every_store_in_redis_connects_with_the_same_options(redis_server: redisserver.RedisServer) -> None:
    url, password = redis_server.url, redis_server.password

    async def check() -> list[dict[str, Any]]:
        keys = RedisStore(url, password, timeout_s=0.3)
        registry = RedisRegistry(url, password, timeout_s=0.4)
        sequences = RedisSequences(url, password, timeout_s=0.5)
        board = RedisBoard(url, password, timeout_s=0.2)  # never below a second: not on a prediction's path
        secrets = RedisSecrets(url, password, timeout_s=1.5)
        # (the store, its client, the timeout it asked for, answers as text, retries)
        made: list[tuple[Any, Redis, float, bool, int]] = [
            (keys, keys.redis, 0.3, True, 1),
            (registry, registry.redis, 0.4, True, 0),
            (sequences, sequences.redis, 0.5, False, 0),
            (board, board._redis, 1.0, False, 0),
            (secrets, secrets._redis, 1.5, True, 0),
        ]
        seen = []
        try:
            for i, (_, client, timeout_s, text, retries) in enumerate(made):
                options = client.connection_pool.connection_kwargs
                assert options.get("password") == password, i
                assert options.get("socket_timeout") == options.get("socket_connect_timeout") == timeout_s, (i, options)
                assert options.get("decode_responses", False) is text, (i, options)
                assert getattr(options.get("retry"), "_retries", 0) == retries, (i, options)
                # a real round trip through the password-protected server, answered as text or bytes
                name = f"yt:test:redis-client:{i}"
                assert await client.set(name, "x", ex=60)
                assert await client.get(name) == ("x" if text else b"x"), i
                seen.append(
                    {
                        "health_check_interval": options.get("health_check_interval", 0),
                        "max_connections": client.connection_pool.max_connections,
                    }
                )
        finally:
            for store, *_ in made:
                await store.close()
        return seen

    seen = asyncio.run(check())
    assert len(seen) == 5 and seen[0]["health_check_interval"] > 0
    assert all(options == seen[0] for options in seen), seen
