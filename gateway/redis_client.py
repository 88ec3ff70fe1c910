"""One Redis connection pool's options, for every part of the gateway that keeps state in Redis (GATEWAY_REDIS_URL):
the key store, the model registry, sequences, the board of leased work and the webhook secrets.

Each of them used to build its own client, and the copies had drifted apart (idle connections pinged before use in
three, not in the other two; pools of 256 or of redis-py's default 100; no connect timeout in one). What differs by
design stays an argument: answers as text or bytes, the timeout each part can afford, the key store's one retry.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# a connection idle this long is pinged before use, so the sockets a Redis restart left dead in the pool of an idle
# replica are replaced instead of failing its first calls
HEALTH_CHECK_S = 2
POOL = 256  # connections per client at most (redis-py refuses a call past it: "Too many connections")


def redis_client(url: str, password: str, timeout_s: float, *, text: bool = True, retries: int = 0) -> Redis:
    """A client for `url` (redis:// or rediss://; `password` "" when the URL carries it or Redis has none). Every
    read and every connect is bounded by `timeout_s` seconds; `text`: answers decoded as str (False: bytes);
    `retries`: a call that fails on its connection is sent again at once, this many times."""
    return Redis.from_url(
        url,
        password=password or None,
        decode_responses=text,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=HEALTH_CHECK_S,
        max_connections=POOL,
    )
