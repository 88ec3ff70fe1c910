"""The event followers (`GET /v1/streams/{id}/events`) this replica serves at once: each holds a connection open for
as long as its client likes and, with Redis, a connection of the board's pool while it waits for the next event
(`XREAD BLOCK`), so they are capped per key (GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY) and in all
(GATEWAY_MAX_STREAM_FOLLOWERS): past either, 429 naming it, and one key can't take the pool (or this process's
sockets) from the streams, jobs and followers of every other key.

A place is claimed before the response starts (the 429 is a real answer) and given back exactly once: when the
events' generator ends (the stream ended, the client went away), or when it is garbage-collected without having run
(a client gone before its first event: a never-started generator runs no `finally`).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.errors import TooManyRequests

RETRY_S = 5  # Retry-After of a refusal: a follower holds its place for as long as it follows


@dataclass
class Followers:
    """The places of one replica: at most `per_key` for one key, `total` in all."""

    per_key: int
    total: int
    _held: Counter[str] = field(default_factory=Counter)

    def claim(self, key_id: str) -> Callable[[], None]:
        """A place for one follower of `key_id`: the function that gives it back (idempotent); TooManyRequests when
        the key, or this replica, has no place left."""
        if self._held[key_id] >= self.per_key:
            raise TooManyRequests(
                f"At most {self.per_key} event followers of one API key are served at once by this server "
                "(GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY), and this key has that many open: close one (or follow "
                "several streams' results through a webhook), then retry.",
                RETRY_S,
            )
        if sum(self._held.values()) >= self.total:
            raise TooManyRequests(
                f"This server already serves {self.total} event followers (GATEWAY_MAX_STREAM_FOLLOWERS): retry "
                "later, or use the stream's webhook.",
                RETRY_S,
            )
        self._held[key_id] += 1
        given: list[bool] = []

        def release() -> None:
            if not given:
                given.append(True)
                self._held[key_id] -= 1
                if self._held[key_id] <= 0:
                    del self._held[key_id]

        return release

    def held(self, key_id: str | None = None) -> int:
        """Places held by `key_id`, or by every key."""
        return self._held[key_id] if key_id is not None else sum(self._held.values())


def holding(events: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    """`events`, giving the place back when they end, fail, are closed, or are dropped unstarted."""

    async def held() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield chunk
        finally:
            release()

    wrapped = held()
    weakref.finalize(wrapped, release)  # a generator that never started: no `finally` of its own will run
    return wrapped
