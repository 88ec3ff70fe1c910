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

Space in /dev/shm is reserved with posix_fallocate when a slot is made: a full /dev/shm is an error at that point
(the request goes over gRPC), never a SIGBUS later. Both processes need the same /dev/shm and Triton must be able to
open the file (created 0600: the same user, as in `make serve`); in Kubernetes that means Triton and the gateway in
one pod sharing an in-memory emptyDir at /dev/shm, which the chart does not do (it deploys them as separate pods).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gateway.shm")

FOLDER = Path("/dev/shm")
MIN_SLOT = 1 << 20
ALIGN = 64


class Registrar(Protocol):
    """The part of tritonclient's asyncio client the pool uses."""

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, offset: int = 0) -> Any: ...

    async def unregister_system_shared_memory(self, name: str = "") -> Any: ...


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
    _count: int = 0
    _pending: int = 0  # bytes of slots being created (registration is awaited)
    _generation: int = 0  # bumped when Triton may have lost the registrations: older slots are dropped on release

    @property
    def used_bytes(self) -> int:
        return sum(s.size for s in (*self._free, *self._busy, *self._stale)) + self._pending

    async def acquire(self, nbytes: int) -> Slot | None:
        """A registered slot of at least nbytes, or None (over the bound, or /dev/shm full): use plain gRPC."""
        while self._stale:
            await self._drop(self._stale.pop())
        fitting = [s for s in self._free if s.size >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.size)
            self._free.remove(slot)
            self._busy.add(slot)
            return slot
        size = slot_size(nbytes)
        while self._free and self.used_bytes + size > self.limit_bytes:  # make room: drop idle smaller slots
            await self._drop(self._free.pop(0))
        if self.used_bytes + size > self.limit_bytes:
            return None
        self._pending += size
        try:
            made = await self._create(size)
        finally:
            self._pending -= size
        if made is not None:
            self._busy.add(made)
        return made

    def release(self, slot: Slot) -> None:
        self._busy.discard(slot)
        if slot.generation == self._generation:
            self._free.append(slot)
        else:
            self._stale.append(slot)  # unregistered by the next acquire (this is called where nothing can await)

    async def forget(self) -> None:
        """Triton refused a region (it restarted, or a size no longer fits): every slot is replaced by a new one. The
        idle ones are unregistered (if Triton still knows them) and dropped now, the busy ones when released."""
        self._generation += 1
        stale, self._free = self._free, []
        for slot in stale:
            await self._drop(slot)

    async def close(self) -> None:
        for slot in [*self._free, *self._busy, *self._stale]:
            await self._drop(slot)
        self._free.clear()
        self._busy.clear()
        self._stale.clear()

    async def _create(self, size: int) -> Slot | None:
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
                await self.client.register_system_shared_memory(name, f"/{name}", size)
            except BaseException:
                buffer.close()
                raise
        except Exception as exc:
            log.warning("shared memory: cannot set up a %d MiB region (%s); using plain gRPC", size >> 20, exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # Triton has it mapped (or failed to): the name is no longer needed
        return Slot(name, size, buffer, self._generation)

    async def _drop(self, slot: Slot) -> None:
        with contextlib.suppress(Exception):  # Triton may have restarted and forgotten it: nothing to do then
            await self.client.unregister_system_shared_memory(slot.name)
        _unmap(slot)


def _unmap(slot: Slot) -> None:
    with contextlib.suppress(BufferError, ValueError):  # arrays still viewing it keep it mapped until they go
        slot.buffer.close()
