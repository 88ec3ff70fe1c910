"""A per-process memory budget: requests reserve the bytes they will hold (the upload, each decoded image) before
they hold them, and wait a bounded time — then 503 — when the budget is spent.

The request count alone bounds nothing: a 136 KB PNG can declare 40 megapixels, 120 MB once decoded. Its header
says so before any pixel is decoded, so the decoded size is reserved from the header (`decode_cost`).
"""

from __future__ import annotations

import collections
import io
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import simplejpeg
from PIL import Image

from gateway.errors import ServiceUnavailable
from gateway.preprocess import JPEG_HEADER_BYTES

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


def decode_cost(data: bytes, max_pixels: int) -> int:
    """Bytes that decoding `data` holds at its peak: the BGR output plus the decoder's copy in the file's own layout
    (e.g. RGBA or 16-bit before conversion, or before an EXIF rotation). Files whose header can't be read (a JPEG's
    in its first JPEG_HEADER_BYTES) are charged as the largest image allowed (OpenCV's own pixel cap refuses larger
    ones). For a worker thread: a header in 20 MiB of junk takes tens of milliseconds to look for."""
    header = data
    if data[:2] == b"\xff\xd8":  # JPEG, the usual upload: libjpeg-turbo reads its header 20x faster than Pillow
        header = data[:JPEG_HEADER_BYTES]
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass
        else:
            bands = {"Gray": 1, "CMYK": 4, "YCCK": 4}.get(colorspace, 3)  # Pillow's L, CMYK (YCCK too) and RGB
            return int(min(width * height, max_pixels) * (3 + bands))
    try:
        with Image.open(io.BytesIO(header)) as im:
            width, height = im.size
            bands = len(im.getbands())
            sample = 2 if im.mode.startswith("I;16") or im.mode in ("I", "F") else 1
    except Exception:  # Pillow raises many types for bad headers
        return max_pixels * 6
    pixels = min(width * height, max_pixels)  # larger ones are refused before decoding
    return pixels * (3 + bands * sample)


@dataclass
class MemoryBudget:
    """Bytes reserved against `capacity`, first come first served; a waiter gives up after `wait_s` with a 503."""

    capacity: int
    wait_s: float = 5.0
    used: int = 0
    _waiters: collections.deque[tuple[int, anyio.Event]] = field(default_factory=collections.deque)

    async def acquire(self, size: int) -> int:
        """Reserve `size` bytes (at most the whole budget: one oversized image runs alone); returns what was
        reserved."""
        size = min(size, self.capacity)
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
    """One request's reservations, released together when the request is done."""

    budget: MemoryBudget
    held: int = 0

    async def take(self, size: int) -> None:
        self.held += await self.budget.acquire(size)

    def keep(self, size: int) -> None:
        """Give back what is held beyond `size` bytes (a body whose parts went to disk as it was parsed)."""
        if self.held > size:
            self.budget.release(self.held - size)
            self.held = size

    def release(self) -> None:
        self.budget.release(self.held)
        self.held = 0
