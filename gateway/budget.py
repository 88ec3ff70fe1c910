"""A per-process memory budget: requests reserve the bytes they will hold (the upload, each decoded image) before
they hold them, and wait a bounded time — then 503 — when the budget is spent.

The request count alone bounds nothing: a 136 KB PNG can declare 40 megapixels, 120 MB once decoded. Its header
says so before any pixel is decoded, so the decoded size is reserved from the header (preprocess.decode_cost).

One key may hold at most `key_share` of the budget at once (GATEWAY_MAX_KEY_BUDGET_SHARE): past it, its next
reservation is refused at once with 429 instead of waiting, so a key that sends large bodies fast and then stalls,
or many large images at once, can't hold the memory every other key needs. A request of a key whose other requests
hold nothing may always reserve (one image larger than the share still runs, alone for that key).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.errors import ServiceUnavailable, TooManyRequests

MiB = 2**20
BASELINE = 512 * MiB  # what the gateway process needs besides images: interpreter, OpenCV, gRPC, buffers
WITHOUT_LIMIT = 2048 * MiB  # the budget when the container has no memory limit (e.g. `make serve`)
_CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2 or v1), or None where there is none."""
    for path in _CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 reports "no limit" as a huge number, v2 as "max"
            return int(text)
    return None


def default_budget(limit: int | None) -> int:
    """Half of what the memory limit leaves above the baseline (the other half covers allocator slack and copies
    that are not reserved, such as the letterboxed tensors and JSON bodies); at least 256 MiB."""
    if limit is None:
        return WITHOUT_LIMIT
    return max((limit - BASELINE) // 2, 256 * MiB)


@dataclass
class MemoryBudget:
    """Bytes reserved against `capacity`, first come first served; a waiter gives up after `wait_s` with a 503."""

    capacity: int
    wait_s: float = 5.0
    key_share: float = 1.0  # the most of `capacity` one key may hold at once (see the module docstring)
    used: int = 0
    _waiters: collections.deque[tuple[int, anyio.Event]] = field(default_factory=collections.deque)
    _by_key: dict[str, int] = field(default_factory=dict)

    def held_by(self, key: str) -> int:
        return self._by_key.get(key, 0)

    async def acquire(self, size: int, key: str = "", own: int = 0) -> int:
        """Reserve `size` bytes (at most the whole budget: one oversized image runs alone) for `key` ("": nobody's
        share), of whose reservations `own` bytes are the requesting request's; returns what was reserved.
        TooManyRequests when the key's other requests hold something and the key would pass its share."""
        size = min(size, self.capacity)
        if key and self.key_share < 1:  # a share of 1: one key may wait for the whole budget like any request
            held, share = self._by_key.get(key, 0), int(self.capacity * self.key_share)
            if held > own and held + size > share:
                raise TooManyRequests(
                    f"This API key's requests in progress already hold {held / 2**20:.0f} MiB of this server's "
                    f"memory for images; one key may hold at most {share / 2**20:.0f} MiB "
                    "(GATEWAY_MAX_KEY_BUDGET_SHARE). Wait for its other requests to finish, or send smaller images.",
                    retry_after=1,
                )
        size = await self._acquire(size)
        if key:
            self._by_key[key] = self._by_key.get(key, 0) + size
        return size

    def release_key(self, key: str, size: int) -> None:
        """Give back `size` bytes that `key` held (`release` for the budget, and the key's share)."""
        if key:
            left = self._by_key.get(key, 0) - size
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)
        self.release(size)

    async def _acquire(self, size: int) -> int:
        if not self._waiters and self.used + size <= self.capacity:
            self.used += size
            return size
        ticket = (size, anyio.Event())
        self._waiters.append(ticket)
        try:
            with anyio.move_on_after(self.wait_s):
                await ticket[1].wait()
        except BaseException:  # cancelled (client gone, server stopping): give back whatever was granted
            self._withdraw(ticket)
            raise
        if ticket[1].is_set():  # granted by `release`, which already counted it
            return size
        self._withdraw(ticket)
        raise ServiceUnavailable(
            "The server's memory for images in flight is in use by other requests. Retry shortly, or send smaller "
            "images.",
            retry_after=2,
        )

    def _withdraw(self, ticket: tuple[int, anyio.Event]) -> None:
        if ticket[1].is_set():
            self.release(ticket[0])
        else:
            self._waiters.remove(ticket)
            self._wake()  # a large waiter at the head may have been blocking smaller ones behind it

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            size, event = self._waiters.popleft()
            self.used += size
            event.set()


@dataclass
class Hold:
    """One request's reservations for its key (counted against the key's share), released together when the
    request is done."""

    budget: MemoryBudget
    key: str = ""
    held: int = 0

    async def reserve(self, size: int) -> None:
        self.held += await self.budget.acquire(size, self.key, self.held)

    def keep(self, size: int) -> None:
        """Give back what is held beyond `size` bytes (a body whose parts went to disk as it was parsed)."""
        if self.held > size:
            self.budget.release_key(self.key, self.held - size)
            self.held = size

    def release(self) -> None:
        self.budget.release_key(self.key, self.held)
        self.held = 0
