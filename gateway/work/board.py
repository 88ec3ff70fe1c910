"""The shared state of leased work (live streams): records, per-key caps, owner leases with fencing tokens and
event logs, behind one interface (`Board`) with two implementations.

- `MemoryBoard` (the single-gateway default): everything in this process; nothing survives a restart.
- `RedisBoard` (gateway/work/redis_board.py, when GATEWAY_REDIS_URL is set): shared by every replica.

The protocol, the same on both (`kind` is "stream"; each record is a flat str -> str mapping):
- `create` adds a record to its kind's active set and to its key's set, atomically refused past the key's cap;
- `acquire` gives one replica the lease on an active record (`SET lease owner NX PX ttl`) with a fencing token that
  grows with every acquisition; `renew` extends it and says whether the record asks its owner to stop;
- every write an owner makes (`write`, `publish`) is fenced: applied only while the lease still holds the
  owner's token, so an owner that lost its lease (paused, partitioned) can no longer change what its successor owns;
- `retire` finishes an active record (a job done, failed or cancelled): its last fields written, out of the active
  sets (no owner claims it, its key's cap no longer counts it) and into the finished ones (`finished` lists them)
  until `remove`;
- `publish` appends an event to the record's log, numbered 1, 2, 3, ... (the record's `last_event` field counts
  them, so the numbers go on across owners), which keeps the newest `events_kept` (GATEWAY_STREAM_EVENTS_KEPT);
- `subscribe` yields a record's events after a given number: the kept ones first, then each as it is published,
  from any replica; a reader that falls behind reads on from the log, and finds a gap in the numbers only where the
  log dropped events before it read them;
- `remove` deletes a record and its log, and ends its subscriptions.

Key layout in Redis (prefix `yt:work:`): `<kind>:<id>` hash (the record), `<kind>:active` set (ids a replica must
run), `<kind>:key:<key id>` set (a key's active ids), `<kind>:lease:<id>` string "<owner> <token>" with PX ttl,
`<kind>:fence:<id>` counter (the last token), `<kind>:done` and `<kind>:done:<key id>` sets (retired ids), and the
event log `<kind>:events:<id>`, a Redis Stream whose entry ids are `<number>-0` (XADD MAXLEN, read with XREAD BLOCK;
`remove` empties it and leaves an end mark there for a few seconds, which ends its readers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

Fields = Mapping[str, str]
EVENTS_KEPT = 300  # GATEWAY_STREAM_EVENTS_KEPT's default
TICK_S = 1.0  # a subscription yields None after this long without a message (the reader's chance to do other work)


@dataclass(frozen=True)
class Event:
    """One entry of a record's event log: its number (1, 2, ... per record, never reused) and its message."""

    id: int
    data: bytes


@dataclass
class Lease:
    """One replica's hold on one record: renewed by its owner's loop; `lost` once a renewal fails."""

    kind: str
    id: str
    owner: str
    token: int
    lost: bool = False
    stop: bool = False  # the record asks its owner to stop (its `stop` field, set by `update`)

    @property
    def value(self) -> str:
        return f"{self.owner} {self.token}"


class Board(Protocol):
    """The shared state of leased work (see the module docstring)."""

    kind: str  # "memory" or "redis"

    async def close(self) -> None: ...

    async def create(self, kind: str, id: str, key: str, fields: Fields, limit: int) -> bool:
        """Store a new active record of `key`; False (nothing stored) when the key already has `limit` active."""
        ...

    async def read(self, kind: str, id: str) -> dict[str, str] | None: ...

    async def active(self, kind: str, key: str | None = None) -> list[str]:
        """The active ids of `kind` (of one key when `key` is given)."""
        ...

    async def update(self, kind: str, id: str, fields: Fields) -> bool:
        """Change a record without the lease (an API call: `stop`); False when there is no such record."""
        ...

    async def acquire(self, kind: str, id: str, owner: str, ttl_s: float) -> Lease | None:
        """The lease on an active record nobody holds and that asks for no stop; None otherwise."""
        ...

    async def renew(self, lease: Lease, ttl_s: float) -> bool:
        """Extend the lease (False: lost or the record is gone); sets `lease.stop` when the record asks for it."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def write(self, lease: Lease, fields: Fields) -> bool:
        """Fenced: change the record only while `lease` holds."""
        ...

    async def publish(self, lease: Lease, message: bytes) -> bool:
        """Fenced: append `message` to the record's event log (its number: the record's `last_event`, plus one)."""
        ...

    async def remove(self, kind: str, id: str, key: str) -> None:
        """Delete the record, its lease, fence and event log; its subscriptions end."""
        ...

    async def retire(self, kind: str, id: str, key: str, fields: Fields, lease: Lease | None = None) -> bool:
        """Finish an active record: write `fields`, move it from the active sets to the finished ones. With `lease`:
        fenced, releases the lease, and refused when the record asks for a stop (a cancel wins over a late finish);
        without: refused when it is no longer active (a finish wins over a late cancel). False when refused."""
        ...

    async def finished(self, kind: str, key: str | None = None) -> list[str]:
        """The retired ids of `kind` (of one key when `key` is given) not yet removed."""
        ...

    def subscribe(
        self, kind: str, id: str, after: int
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event | None]]:
        """The record's events numbered above `after`, oldest first: those kept, then each as it is published (None
        after TICK_S without any); the iteration ends once the record is removed (within a TICK_S)."""
        ...


@dataclass
class _Held:
    value: str
    until: float


@dataclass
class _Log:
    """A record's kept events, and an asyncio.Event set (then replaced) at each append and at the removal."""

    events: deque[Event]
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class MemoryBoard:
    """The board in this process (see the module docstring); times on the monotonic clock."""

    kind: str = "memory"
    _records: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    _active: dict[str, set[str]] = field(default_factory=dict)
    _by_key: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _leases: dict[tuple[str, str], _Held] = field(default_factory=dict)
    _fences: dict[tuple[str, str], int] = field(default_factory=dict)
    events_kept: int = EVENTS_KEPT
    _logs: dict[tuple[str, str], _Log] = field(default_factory=dict)
    _done: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (kind, key id or "") -> retired ids

    async def close(self) -> None:
        return None

    def _record(self, kind: str, id: str) -> dict[str, str] | None:
        return self._records.get((kind, id))

    def _holds(self, lease: Lease) -> bool:
        held = self._leases.get((lease.kind, lease.id))
        return held is not None and held.value == lease.value and held.until > time.monotonic()

    async def create(self, kind: str, id: str, key: str, fields: Fields, limit: int) -> bool:
        mine = self._by_key.setdefault((kind, key), set())
        if limit and len(mine) >= limit:
            return False
        self._records[(kind, id)] = dict(fields)
        self._active.setdefault(kind, set()).add(id)
        mine.add(id)
        return True

    async def read(self, kind: str, id: str) -> dict[str, str] | None:
        found = self._record(kind, id)
        return dict(found) if found is not None else None

    async def active(self, kind: str, key: str | None = None) -> list[str]:
        ids = self._active.get(kind, set()) if key is None else self._by_key.get((kind, key), set())
        return sorted(ids)

    async def update(self, kind: str, id: str, fields: Fields) -> bool:
        found = self._record(kind, id)
        if found is None:
            return False
        found.update(fields)
        return True

    async def acquire(self, kind: str, id: str, owner: str, ttl_s: float) -> Lease | None:
        found = self._record(kind, id)
        if found is None or id not in self._active.get(kind, set()) or found.get("stop"):
            return None
        held = self._leases.get((kind, id))
        if held is not None and held.until > time.monotonic():
            return None
        token = self._fences.get((kind, id), 0) + 1
        self._fences[(kind, id)] = token
        lease = Lease(kind, id, owner, token)
        self._leases[(kind, id)] = _Held(lease.value, time.monotonic() + ttl_s)
        found.update({"owner": owner, "token": str(token)})
        return lease

    async def renew(self, lease: Lease, ttl_s: float) -> bool:
        found = self._record(lease.kind, lease.id)
        if found is None or not self._holds(lease):
            lease.lost = True
            return False
        self._leases[(lease.kind, lease.id)].until = time.monotonic() + ttl_s
        lease.stop = bool(found.get("stop"))
        return True

    async def release(self, lease: Lease) -> None:
        if self._holds(lease):
            del self._leases[(lease.kind, lease.id)]

    async def write(self, lease: Lease, fields: Fields) -> bool:
        found = self._record(lease.kind, lease.id)
        if found is None or not self._holds(lease):
            return False
        found.update(fields)
        return True

    async def publish(self, lease: Lease, message: bytes) -> bool:
        found = self._record(lease.kind, lease.id)
        if found is None or not self._holds(lease):
            return False
        number = int(found.get("last_event") or 0) + 1
        found["last_event"] = str(number)
        log = self._log(lease.kind, lease.id)
        log.events.append(Event(number, message))
        log.wake()
        return True

    def _log(self, kind: str, id: str) -> _Log:
        log = self._logs.get((kind, id))
        if log is None:
            log = self._logs[(kind, id)] = _Log(deque(maxlen=self.events_kept))
        return log

    async def remove(self, kind: str, id: str, key: str) -> None:
        name = (kind, id)
        for table in (self._records, self._leases, self._fences):
            table.pop(name, None)
        self._active.get(kind, set()).discard(id)
        self._by_key.get((kind, key), set()).discard(id)
        for group in ("", key):
            self._done.get((kind, group), set()).discard(id)
        log = self._logs.pop(name, None)
        if log is not None:
            log.wake()

    async def retire(self, kind: str, id: str, key: str, fields: Fields, lease: Lease | None = None) -> bool:
        found = self._record(kind, id)
        if found is None or id not in self._active.get(kind, set()):
            return False
        if lease is not None:
            if not self._holds(lease) or found.get("stop"):
                return False
            del self._leases[(kind, id)]
        found.update(fields)
        self._active[kind].discard(id)
        self._by_key.get((kind, key), set()).discard(id)
        for group in ("", key):
            self._done.setdefault((kind, group), set()).add(id)
        return True

    async def finished(self, kind: str, key: str | None = None) -> list[str]:
        return sorted(self._done.get((kind, key or ""), set()))

    @contextlib.asynccontextmanager
    async def subscribe(self, kind: str, id: str, after: int) -> AsyncIterator[AsyncIterator[Event | None]]:
        async def events() -> AsyncIterator[Event | None]:
            position = after
            while self._record(kind, id) is not None:
                log = self._log(kind, id)
                changed = log.changed  # taken before reading: an append after the read sets this one
                fresh = [event for event in log.events if event.id > position]
                for event in fresh:
                    position = event.id
                    yield event
                if fresh:
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), TICK_S)
                except TimeoutError:
                    yield None

        yield events()
