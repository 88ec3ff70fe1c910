"""Memory is bounded by a budget whatever the input: uploads and decoded images reserve their bytes before they are
held, and wait (bounded) or get 503 when the budget is spent."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import anyio
import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gateway.budget import Hold, MiB, MemoryBudget, default_budget
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.vision.preprocess import decode_cost, declared_pixels
from tests.conftest import start_gateway, stop_gateway
from tritonlocal import launcher


def test_budget_waits_then_admits_in_arrival_order() -> None:
    order: list[str] = []

    async def main() -> None:
        budget = MemoryBudget(100, wait_s=5)
        assert await budget.acquire(80) == 80

        async def waiter(name: str, size: int) -> None:
            await budget.acquire(size)
            order.append(name)

        async with anyio.create_task_group() as group:
            group.start_soon(waiter, "big", 90)
            await anyio.sleep(0.05)
            group.start_soon(waiter, "small", 20)  # would fit now, but queues behind the earlier waiter
            await anyio.sleep(0.05)
            assert order == [] and budget.used == 80
            budget.release(80)
            await anyio.sleep(0.05)
            assert order == ["big"] and budget.used == 90
            budget.release(90)
        assert order == ["big", "small"] and budget.used == 20

    anyio.run(main)


def test_budget_gives_up_with_503_after_the_wait_and_lets_the_next_in() -> None:
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=0.1)
        await budget.acquire(60)
        with pytest.raises(ServiceUnavailable) as info:
            await budget.acquire(50)
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "2"
        assert budget.used == 60 and not budget._waiters
        assert await budget.acquire(40) == 40

    anyio.run(main)


def test_cancelled_waiter_leaves_nothing_reserved() -> None:
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=5)
        await budget.acquire(100)
        with anyio.move_on_after(0.05):
            await budget.acquire(50)
        assert not budget._waiters
        budget.release(100)
        assert budget.used == 0

    anyio.run(main)


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=0.1)
        assert await budget.acquire(500) == 100
        with pytest.raises(ServiceUnavailable):
            await budget.acquire(1)

    anyio.run(main)


def test_one_key_holds_at_most_its_share_while_its_other_requests_hold_memory() -> None:
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=0.1, key_share=0.5)
        first, second, other = Hold(budget, "a"), Hold(budget, "a"), Hold(budget, "b")
        await first.reserve(40)
        with pytest.raises(TooManyRequests) as info:  # 40 + 20 > 50, and the key's other request holds 40
            await second.reserve(20)
        assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
        assert "GATEWAY_MAX_KEY_BUDGET_SHARE" in info.value.message
        await first.reserve(30)  # one request's own reservations are not held against it: 70 of 100
        await other.reserve(30)  # another key is not limited by this one
        assert budget.held_by("a") == 70 and budget.held_by("b") == 30 and budget.used == 100
        first.release()
        await second.reserve(60)  # the key's other requests hold nothing now: larger than the share, still admitted
        assert budget.held_by("a") == 60
        second.release()
        other.release()
        assert budget.used == 0 and budget.held_by("a") == 0 and budget.held_by("b") == 0

    anyio.run(main)


def _png(width: int, height: int, mode: str) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def test_decode_cost_is_read_from_the_header() -> None:
    assert decode_cost(_png(100, 50, "RGB"), 10**9) == 100 * 50 * (3 + 3)
    assert decode_cost(_png(100, 50, "RGBA"), 10**9) == 100 * 50 * (3 + 4)
    assert decode_cost(_png(100, 50, "I;16"), 10**9) == 100 * 50 * (3 + 2)
    assert decode_cost(_png(100, 50, "RGB"), 1000) == 1000 * 6  # over the pixel cap: refused before decoding
    assert decode_cost(b"\x89PNG\r\n\x1a\n garbage", 1000) == 1000 * 6  # unreadable header: the worst case
    assert decode_cost(b"not an image", 1000) == 0  # refused by its magic bytes (415) before anything is decoded


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_decode_cost_of_a_jpeg_is_what_pillow_reads(mode: str) -> None:
    """JPEG headers are read by libjpeg-turbo (simplejpeg), 20x faster than Pillow: same sizes and bands."""
    out = io.BytesIO()
    Image.new(mode, (123, 45)).save(out, "JPEG")
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        bands = len(im.getbands())
    assert decode_cost(data, 10**9) == 123 * 45 * (3 + bands)
    assert decode_cost(data, 1000) == 1000 * (3 + bands)
    assert decode_cost(data[:3] + b"\x00" * 40, 1000) == 1000 * 6  # a JPEG marker and a broken header
    assert decode_cost(data[:2] + b"\x00" * 40, 1000) == 0  # no JPEG's magic bytes: refused (415) undecoded


@pytest.mark.parametrize("junk", [b"\x00", b"\xff"])
def test_a_header_lost_in_junk_is_looked_for_only_near_the_start(junk: bytes) -> None:
    """20 MiB of junk after a JPEG marker: Pillow looks for a header a byte at a time in Python (1.3 s for zeros,
    about 9 s for 0xFF bytes), so it gets only the first JPEG_HEADER_BYTES; the file is charged as the worst case
    and has no declared size. A generous bound: the whole file took seconds."""
    data = b"\xff\xd8\xff" + junk * (20 * 2**20)
    started = time.perf_counter()
    assert decode_cost(data, 1000) == 1000 * 6
    assert declared_pixels(data) is None
    assert time.perf_counter() - started < 2.0
    out = io.BytesIO()
    Image.new("RGB", (123, 45)).save(out, "JPEG")
    assert declared_pixels(out.getvalue() + junk * 2**20) == (123, 45)  # a header at the start is still read


def test_default_budget_follows_the_container_limit() -> None:
    assert default_budget(None) == 2048 * MiB
    assert default_budget(2048 * MiB) == (2048 - 512) // 2 * MiB
    assert default_budget(600 * MiB) == 256 * MiB


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.load
def test_concurrent_40_megapixel_pngs_stay_within_the_budget(
    triton: launcher.TritonServer, tmp_path: Path, images: dict[str, Path]
) -> None:
    """16 concurrent 6300x6300 PNGs (~120 MB each decoded; 136 KB each uploaded): every answer is 200, 429 or 503,
    and the gateway's peak RSS stays under its resident size before the burst + the budget + a stated margin."""
    budget, margin = 400 * MiB, 150 * MiB  # margin: allocator slack, letterboxed tensors, thread stacks
    # one key sends all 16: its share is the whole budget here (the share has a test of its own, below)
    gw = start_gateway(
        triton, tmp_path, decode_budget_bytes=str(budget), decode_budget_wait_s="3", max_key_budget_share="1"
    )
    try:
        big = np.full((6300, 6300, 3), 90, np.uint8)
        cv2.rectangle(big, (1000, 1000), (5000, 5000), (200, 40, 40), -1)
        png = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
        del big
        assert len(png) < 1_000_000
        warm = gw.predict("yolov8n", files={"image": ("big.png", png)})  # first-use allocations before the baseline
        assert warm.status_code == 200, warm.text
        pid = gw.process.pid
        before = _rss(pid, "VmRSS")
        statuses: list[int] = []
        peak = [before]
        done = threading.Event()

        def sample() -> None:  # VmHWM would include the warm-up; sample VmRSS instead
            while not done.is_set():
                peak[0] = max(peak[0], _rss(pid, "VmRSS"))
                time.sleep(0.01)

        def send() -> None:
            r = gw.predict("yolov8n", files={"image": ("big.png", png)})
            statuses.append(r.status_code)
            assert r.headers["content-type"].startswith("application/json")

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        done.set()
        sampler.join()
        assert len(statuses) == 16 and set(statuses) <= {200, 429, 503}, statuses
        assert 200 in statuses and 503 in statuses, statuses  # some admitted, the rest refused: the budget acted
        grown = peak[0] - before
        print(
            f"\nRSS before {before / MiB:.0f} MiB, peak {peak[0] / MiB:.0f} MiB (+{grown / MiB:.0f}); "
            f"budget {budget / MiB:.0f} MiB; statuses {sorted(statuses)}"
        )
        assert grown < budget + margin, (
            f"RSS grew {grown / MiB:.0f} MiB, budget {budget / MiB:.0f} + {margin / MiB:.0f}"
        )
        with open(images["bus"], "rb") as f:
            after = gw.predict("yolov8n", files={"image": f})
        assert after.status_code == 200 and after.json()["data"], after.text
        text = requests.get(f"{gw.url}/metrics", timeout=10).text
        gauges = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert gauges["yolo_memory_budget_bytes"] == budget
        assert gauges["yolo_memory_budget_used_bytes"] == 0  # everything reserved was given back
    finally:
        stop_gateway(gw)
