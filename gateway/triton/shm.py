"""Triton's system shared memory for the tensors, when the gateway and Triton share a host and its /dev/shm
(GATEWAY_TRITON_SHM_BYTES).

Over plain gRPC a 640x384 image (737 KB) and a pose model's raw output (1.1 MB) each cross protobuf, HTTP/2 frames
and the socket, and copying them into freshly mapped pages cost the gateway's gRPC client 2-3.5 ms of CPU per call
(≈ 1-2 ms per request once everything else was trimmed). With shared memory the request carries only a region's
name and offsets; the gateway copies the letterboxed image into the region, Triton reads it and writes the outputs
beside it, and post-processing reads them in place (bench/RESULTS.md, "Cost per image").

A region ("slot") holds one Triton request: its input at offset 0, its outputs after it. Slots are created on demand
(sizes rounded up to a power of two, 1 MiB at least), registered with Triton once, reused, and bounded in total by
GATEWAY_TRITON_SHM_BYTES; when none is free within that bound, a request simply goes over plain gRPC. The file in
/dev/shm is unlinked as soon as Triton has mapped it, so nothing is left behind if the gateway dies; the flip side is
that a restarted Triton cannot re-open it, so on any shared-memory error the pool forgets every slot (new ones are
made and registered) and the failed request is sent again over plain gRPC.

Every call to Triton here is bounded: by the time the request has left (`acquire`'s `timeout_s`, part of the
inference deadline) and by CALL_TIMEOUT_S. A region whose registration or unregistration timed out (a hung Triton)
may still be held by Triton: its name is kept and unregistered by a later call, and its bytes count against the
bound until then. A slot whose request did not complete (timed out, cancelled, failed) is never reused: Triton may
still run that request later and write its outputs into the slot.

Space in /dev/shm is reserved with posix_fallocate when a slot is made: a full /dev/shm is an error at that point
(the request goes over gRPC), never a SIGBUS later. Both processes need the same /dev/shm and Triton must be able to
open the file (created 0600: the same user, as in `make serve`); in Kubernetes that means Triton and the gateway in
one pod sharing an in-memory emptyDir at /dev/shm, which the chart does not do (it deploys them as separate pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gateway.shm")

FOLDER = Path("/dev/shm")
MIN_SLOT = 1 << 20
ALIGN = 64
CALL_TIMEOUT_S = 5.0  # one (un)registration: milliseconds when Triton is well, so this only bounds a hung one


class Registrar(Protocol):
    """The part of tritonclient's asyncio client the pool uses."""

    async def register_system_shared_memory(
        self, name: str, key: str, byte_size: int, offset: int = 0, headers: Any = None, client_timeout: Any = None
    ) -> Any: ...

    async def unregister_system_shared_memory(
        self, name: str = "", headers: Any = None, client_timeout: Any = None
    ) -> Any: ...


@dataclass(eq=False)
class Slot:
    """One registered region: `buffer` is its memory in this process, `name` Triton's name for it."""

    name: str
    size: int
    buffer: mmap.mmap
    generation: int


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def slot_size(nbytes: int) -> int:
    return max(MIN_SLOT, 1 << (max(nbytes, 1) - 1).bit_length())


@dataclass
class SharedMemoryPool:
    client: Registrar
    limit_bytes: int
    prefix: str = field(default_factory=lambda: f"yolo-gateway-{os.getpid()}-{secrets.token_hex(4)}")
    folder: Path = FOLDER
    _free: list[Slot] = field(default_factory=list)
    _busy: set[Slot] = field(default_factory=set)
    _stale: list[Slot] = field(default_factory=list)  # released slots of an older generation, to unregister
    _orphans: dict[str, int] = field(default_factory=dict)  # name -> bytes: Triton may hold it, a call timed out
    _count: int = 0
    _pending: int = 0  # bytes of slots being created (registration is awaited)
    _generation: int = 0  # bumped when Triton may have lost the registrations: older slots are dropped on release

    @property
    def used_bytes(self) -> int:
        slots = sum(s.size for s in (*self._free, *self._busy, *self._stale))
        return slots + self._pending + sum(self._orphans.values())

    async def acquire(self, nbytes: int, timeout_s: float = CALL_TIMEOUT_S) -> Slot | None:
        """A registered slot of at least nbytes, or None (over the bound, /dev/shm full, or Triton did not answer
        within `timeout_s`): use plain gRPC."""
        deadline = time.monotonic() + timeout_s
        while self._stale:
            await self._drop(self._stale.pop(), deadline)
        for name in list(self._orphans):
            await self._unregister(name, self._orphans.pop(name), deadline)
        fitting = [s for s in self._free if s.size >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.size)
            self._free.remove(slot)
            self._busy.add(slot)
            return slot
        size = slot_size(nbytes)
        while self._free and self.used_bytes + size > self.limit_bytes:  # make room: drop idle smaller slots
            await self._drop(self._free.pop(0), deadline)
        if self.used_bytes + size > self.limit_bytes:
            return None
        self._pending += size
        try:
            made = await self._create(size, deadline)
        finally:
            self._pending -= size
        if made is not None:
            self._busy.add(made)
        return made

    def release(self, slot: Slot, reuse: bool = True) -> None:
        """Give a slot back. `reuse=False` when its request did not complete: Triton may still write into it."""
        self._busy.discard(slot)
        if reuse and slot.generation == self._generation:
            self._free.append(slot)
        else:
            self._stale.append(slot)  # unregistered by the next acquire (this is called where nothing can await)

    async def forget(self) -> None:
        """Triton refused a region (it restarted, or a size no longer fits): every slot is replaced by a new one. The
        idle ones are unregistered (if Triton still knows them) and dropped now, the busy ones when released."""
        self._generation += 1
        stale, self._free = self._free, []
        deadline = time.monotonic() + CALL_TIMEOUT_S
        for slot in stale:
            await self._drop(slot, deadline)

    async def close(self) -> None:
        """Unregister and unmap every slot, in CALL_TIMEOUT_S at most in all (what a hung Triton does not answer,
        it keeps until it restarts)."""
        deadline = time.monotonic() + CALL_TIMEOUT_S
        for slot in [*self._free, *self._busy, *self._stale]:
            await self._drop(slot, deadline)
        for name in list(self._orphans):
            await self._unregister(name, self._orphans.pop(name), deadline)
        self._free.clear()
        self._busy.clear()
        self._stale.clear()

    async def _create(self, size: int, deadline: float) -> Slot | None:
        try:
            remaining = _remaining(deadline)
        except TimeoutError:
            return None
        self._count += 1
        name = f"{self.prefix}-{self._count}"
        path = self.folder / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            log.warning("shared memory: cannot create %s (%s); using plain gRPC", path, exc)
            return None
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # reserve the pages now: a full /dev/shm fails here, not later
                buffer = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            try:
                async with asyncio.timeout(remaining):
                    await self.client.register_system_shared_memory(name, f"/{name}", size, client_timeout=remaining)
            except BaseException:
                buffer.close()
                raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) or "deadline" in str(exc).lower():
                self._orphans[name] = size  # Triton may have mapped it before it stopped answering
            log.warning("shared memory: cannot set up a %d MiB region (%s); using plain gRPC", size >> 20, exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # Triton has it mapped (or failed to): the name is no longer needed
        return Slot(name, size, buffer, self._generation)

    async def _drop(self, slot: Slot, deadline: float) -> None:
        _unmap(slot)
        await self._unregister(slot.name, slot.size, deadline)

    async def _unregister(self, name: str, size: int, deadline: float) -> None:
        """Ask Triton to let go of a region; kept in `_orphans` for a later try when it did not answer in time (or
        still uses it). Any other refusal means Triton no longer knows it (it restarted): nothing left to do."""
        try:
            remaining = _remaining(deadline)
            async with asyncio.timeout(remaining):
                await self.client.unregister_system_shared_memory(name, client_timeout=remaining)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types, and TimeoutError
            text = str(exc).lower()
            if isinstance(exc, TimeoutError) or "deadline" in text or "in use" in text:
                self._orphans[name] = size


def _remaining(deadline: float) -> float:
    """Seconds left for one call to Triton: until `deadline`, at most CALL_TIMEOUT_S (TimeoutError when none)."""
    left = min(CALL_TIMEOUT_S, deadline - time.monotonic())
    if left <= 0:
        raise TimeoutError("no time left for a call to Triton")
    return left


def _unmap(slot: Slot) -> None:
    with contextlib.suppress(BufferError, ValueError):  # arrays still viewing it keep it mapped until they go
        slot.buffer.close()
