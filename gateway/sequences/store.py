"""Where a `sequence`'s tracker state lives between requests: one interface (`Sequences`), two implementations.

- `MemorySequences` (the keys file's mode, one gateway process): a dict in the process.
- `RedisSequences` (gateway/sequences/redis_store.py, when GATEWAY_REDIS_URL is set): in Redis, so that consecutive
  frames of one sequence may reach different replicas.

Each sequence is (API key id, name) → (frame counter, state bytes). The API key id is the one the request was
authenticated with, never anything the client names, so one key can neither read nor advance another's sequences.

- `read` gives the counter (0 for a sequence that does not exist, or expired) and the state.
- `write` is a compare-and-set on the counter: it stores the state as frame `counter + 1` only if the counter is
  still the one `read` gave, else Conflict (409): another frame of the sequence was tracked in between (two frames
  sent at once), and this one is refused rather than continue a state that is no longer the sequence's.
- A sequence expires `ttl_s` after its last write (GATEWAY_SEQUENCE_TTL_S).
- A key holds at most `cap` live sequences (GATEWAY_MAX_SEQUENCES_PER_KEY): starting one more is TooManyRequests
  (429); `read` refuses early, `write` again atomically (two new sequences at once can't both take the last place).
- The store unreachable: ServiceUnavailable (503), for tracking requests only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import Conflict, ServiceUnavailable, TooManyRequests

SWEEP_S = 1.0  # the in-process store drops expired sequences at most this often


@dataclass(frozen=True)
class Stored:
    """A sequence as stored: frames tracked so far (0: a new sequence) and the tracker state after the last one."""

    frame: int = 0
    state: bytes | None = None


class Sequences(Protocol):
    """What the prediction flow needs from the sequence store (see the module docstring)."""

    kind: str

    async def read(self, key_id: str, name: str) -> Stored:
        """The sequence's counter and state (Stored() when new); TooManyRequests when new and the key is at its cap;
        ServiceUnavailable when the store is unreachable."""
        ...

    async def write(self, key_id: str, name: str, frame: int, state: bytes) -> int:
        """Store `state` as frame `frame + 1` if the counter is still `frame`, and return `frame + 1`; else Conflict.
        TooManyRequests / ServiceUnavailable as `read`."""
        ...

    async def close(self) -> None: ...


def conflict(name: str, ttl_s: float) -> Conflict:
    return Conflict(
        f"Sequence '{name}' moved on while this frame was being tracked: another frame of it was sent at the same "
        f"time (or the sequence expired, {ttl_s:g} s after its last frame). This frame was not tracked; send a "
        "sequence's frames one at a time, each after the answer to the previous one."
    )


def too_many(cap: int, ttl_s: float) -> TooManyRequests:
    return TooManyRequests(
        f"This API key already tracks {cap} sequences, the most one key may (GATEWAY_MAX_SEQUENCES_PER_KEY). Reuse "
        f"a sequence name, or wait: a sequence ends {ttl_s:g} s after its last frame.",
        math.ceil(ttl_s),
    )


def unreachable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The tracking state store (Redis) is unreachable, so 'sequence' can't continue its tracks right now. Retry "
        "in a few seconds; predictions without 'sequence' keep working.",
        2,
    )


@dataclass
class _Entry:
    frame: int
    state: bytes
    expires: float


@dataclass
class MemorySequences:
    """The in-process store: sequences in a dict, expired lazily (see the module docstring). Every method runs on
    the event loop without awaiting, so each is atomic: the compare-and-set needs no lock."""

    ttl_s: float = 60.0
    cap: int = 100
    clock: Callable[[], float] = time.monotonic
    kind: str = "memory"
    _keys: dict[str, dict[str, _Entry]] = field(default_factory=dict, init=False, repr=False)
    _swept: float = field(default=0.0, init=False, repr=False)

    async def read(self, key_id: str, name: str) -> Stored:
        entry = self._live(key_id).get(name)
        if entry is None:
            self._check_room(key_id)
            return Stored()
        return Stored(entry.frame, entry.state)

    async def write(self, key_id: str, name: str, frame: int, state: bytes) -> int:
        sequences = self._live(key_id)
        entry = sequences.get(name)
        if (entry.frame if entry else 0) != frame:
            raise conflict(name, self.ttl_s)
        if entry is None:
            self._check_room(key_id)
        sequences[name] = _Entry(frame + 1, state, self.clock() + self.ttl_s)
        self._keys[key_id] = sequences
        return frame + 1

    async def close(self) -> None:
        self._keys.clear()

    def _check_room(self, key_id: str) -> None:
        if len(self._keys.get(key_id, {})) >= self.cap:
            raise too_many(self.cap, self.ttl_s)

    def _live(self, key_id: str) -> dict[str, _Entry]:
        """The key's sequences that have not expired (and, at most every SWEEP_S, every key's expired ones dropped)."""
        now = self.clock()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            for kid in list(self._keys):
                alive = {n: e for n, e in self._keys[kid].items() if e.expires > now}
                if alive:
                    self._keys[kid] = alive
                else:
                    del self._keys[kid]
        sequences = self._keys.get(key_id, {})
        if any(e.expires <= now for e in sequences.values()):
            sequences = {n: e for n, e in sequences.items() if e.expires > now}
            self._keys[key_id] = sequences
        return sequences
