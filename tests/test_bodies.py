"""Request bodies against the real gateway over real sockets: read under a deadline of their own, charged as they
arrive, without holding an in-flight slot, one key's requests capped; nothing the size of a body on the event loop."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import cv2
import numpy as np
import pytest
import requests

from gateway.keys.auth import KeyDraft, create_key
from gateway.budget import Hold, MemoryBudget
from gateway.errors import TooManyRequests
from gateway.api.forms import Pace
from gateway.keys.ratelimit import KeySlots
from gateway.settings import Settings
from tests.conftest import Gateway, start_gateway, stop_gateway
from tritonlocal import launcher

BOUNDARY = "bodiesboundary"


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> bytes:
    """A multipart/form-data body (boundary BOUNDARY) with text `fields` and file parts `files`."""
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, data in files.items():
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


def _chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """The body in pieces: requests sends a generator with Transfer-Encoding: chunked (no Content-Length)."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _metric(gw: Gateway, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", requests.get(f"{gw.url}/metrics", timeout=10).text, re.M)
    return float(found[1]) if found else 0.0


def _admin(gw: Gateway) -> tuple[str, dict[str, str]]:
    _, admin = create_key(gw.keys_file, KeyDraft("bodies-admin", admin=True))
    return f"{gw.url}/v1/keys", {"x-api-key": admin}


def test_chunked_prediction_is_logged_counted_and_measured(gateway: Gateway, images: dict[str, Path]) -> None:
    """Issue #30: a multipart prediction sent chunked (no Content-Length) was answered, but its body size reached the
    metrics as None: TypeError after the response, so its access-log line and its usage count were lost."""
    base, admin = _admin(gateway)
    new = requests.post(base, headers=admin, json={"name": "chunked"}, timeout=10).json()["data"]
    body = _multipart({"size": "320"}, {"image": images["bus"].read_bytes()})
    bytes_before = _metric(gateway, "yolo_request_body_bytes_sum")
    request_id = secrets.token_hex(8)
    headers = {
        "x-api-key": new["key"],
        "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        "x-request-id": request_id,
    }
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers=headers, data=_chunked(body), timeout=60)
    assert r.status_code == 200 and r.json()["data"], r.text
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"

    deadline = time.monotonic() + 10  # the log line and the usage are written after the response
    while True:
        logged = [line for line in gateway.log_path.read_text().split("\n") if f'"request_id":"{request_id}"' in line]
        usage = requests.get(f"{base}/{new['id']}/usage", headers=admin, timeout=10).json()["data"]["usage"]
        if logged and usage:
            break
        assert time.monotonic() < deadline, f"after 10 s: log lines {logged}, usage {usage}"
        time.sleep(0.1)
    assert '"status":200' in logged[0] and f'"key_id":"{new["id"]}"' in logged[0]
    assert [(u["model"], u["requests"], u["images"], u["errors"]) for u in usage] == [("yolov8n", 1, 1, {})]
    assert "TypeError" not in gateway.log_path.read_text()
    # every byte of the body was counted, though none was declared
    assert _metric(gateway, "yolo_request_body_bytes_sum") - bytes_before >= len(body)


def test_chunked_base64_source_is_accepted_like_a_declared_one(gateway: Gateway, images: dict[str, Path]) -> None:
    """Issue #26, 15: a base64 `source` (a text field far over 4 KiB) sent chunked was refused as a field over
    4 KiB, though the same body with Content-Length was answered."""
    body = _multipart({"source": base64.b64encode(images["bus"].read_bytes()).decode()}, {})
    assert len(body) > 100_000
    url = f"{gateway.url}/api/models/yolov8n/predict"
    headers = {"Authorization": f"Bearer {gateway.key}", "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    declared = requests.post(url, headers=headers, data=body, timeout=60)
    chunked = requests.post(url, headers=headers, data=_chunked(body), timeout=60)
    assert declared.status_code == 200 and chunked.status_code == 200, (declared.text, chunked.text)
    assert "transfer-encoding" in chunked.request.headers
    results = [image["results"] for image in chunked.json()["images"]]
    assert results[0] and results == [image["results"] for image in declared.json()["images"]]


def test_pace_allows_the_grace_then_the_minimum_rate_up_to_the_total() -> None:
    pace = Pace(timeout_s=60, min_rate=1024, grace_s=10)
    assert pace.allowed_s(0) == 10  # nothing yet: the grace period
    assert pace.allowed_s(5 * 1024) == 15  # each KiB buys a second more
    assert pace.allowed_s(10**9) == 60  # never past the total
    assert Pace(timeout_s=60, min_rate=0, grace_s=10).allowed_s(0) == 60  # no rate: only the total


def test_body_settings_are_checked_and_the_key_cap_follows_the_inflight_cap() -> None:
    for name, raw, message in (
        ("GATEWAY_BODY_TIMEOUT_S", "0", "more than 0"),
        ("GATEWAY_BODY_MIN_RATE", "-1", "0 or more"),
        ("GATEWAY_BODY_GRACE_S", "nan", "0 or more"),
        ("GATEWAY_MAX_INFLIGHT_PER_KEY", "-2", "0 or more"),
    ):
        with pytest.raises(ValueError, match=name) as caught:
            Settings.from_env({name: raw})
        assert message in str(caught.value)
    assert Settings().per_key_inflight == 32 and Settings().body_timeout_s <= 60
    assert Settings(max_inflight=1).per_key_inflight == 1
    assert Settings(max_inflight=64, max_inflight_per_key=100).per_key_inflight == 100


def test_key_slots_cap_one_key_and_free_on_release() -> None:
    slots = KeySlots(2)
    slots.claim("a")
    slots.claim("a")
    slots.claim("b")  # another key is not affected
    with pytest.raises(TooManyRequests) as refused:
        slots.claim("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    assert "At most 2 requests of one API key" in refused.value.message
    slots.release("a")
    slots.claim("a")
    for key in ("a", "a", "b"):
        slots.release(key)
    assert slots._held == {}


def test_hold_keeps_only_what_a_spooled_body_holds() -> None:
    async def main() -> None:
        budget = MemoryBudget(1000)
        hold = Hold(budget)
        await hold.reserve(700)
        hold.keep(200)
        assert hold.held == 200 and budget.used == 200
        hold.keep(500)  # keeps what it has; takes nothing more
        assert hold.held == 200 and budget.used == 200
        hold.release()
        assert budget.used == 0

    anyio.run(main)


async def _slow_upload(port: int, key: str, declared: int, every_s: float, piece: int) -> tuple[float, bytes]:
    """A multipart upload declaring `declared` bytes that sends `piece` bytes every `every_s` seconds until it is
    answered; (seconds from its headers to the end of the answer, the raw answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(
        (
            f"POST /v1/predict/yolov8n HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        ).encode()
    )
    reading = asyncio.ensure_future(_answer(reader))
    try:
        while not reading.done():
            try:
                writer.write(b"\0" * piece)
                await writer.drain()
            except ConnectionError:
                pass  # closed after the answer, which is read below
            await asyncio.wait({reading}, timeout=every_s)
            assert time.monotonic() - started < 60, "never answered"
        return time.monotonic() - started, await reading
    finally:
        reading.cancel()
        writer.close()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer with a Content-Length: its head and body, as received."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head.lower())
    assert length, head
    return head + await reader.readexactly(int(length[1]))


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _json_body(answer: bytes) -> dict[str, object]:
    body: dict[str, object] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return body


@pytest.mark.load
def test_slow_uploads_hold_no_slot_and_end_with_408(
    triton: launcher.TritonServer, tmp_path: Path, images: dict[str, Path]
) -> None:
    """Issue #26, 1: uploads trickling a few bytes per second held the in-flight slots and the memory budget
    declared for them, and were never cut off: every other key got 503. Now a body being read holds no slot and only
    the bytes that arrived, one key has at most GATEWAY_MAX_INFLIGHT_PER_KEY requests in progress, and a body slower
    than GATEWAY_BODY_MIN_RATE after GATEWAY_BODY_GRACE_S, or longer than GATEWAY_BODY_TIMEOUT_S, ends with 408."""
    grace, total = 4.0, 9.0
    gw = start_gateway(
        triton,
        tmp_path,
        max_inflight="4",
        max_inflight_per_key="8",
        body_grace_s=str(grace),
        body_timeout_s=str(total),
        body_min_rate="1024",
    )
    try:
        _, slow_key = create_key(gw.keys_file, KeyDraft("slow"))
        port = int(gw.url.rsplit(":", 1)[1])
        tiny = images["tiny"].read_bytes()

        async def scenario() -> tuple[list[tuple[float, bytes]], tuple[float, bytes], dict[str, float], int, float]:
            # 64 from one key at 4 bytes/s (56 over its cap of 8), one from another key at 4 KiB/s: more bodies are
            # being read than the gateway has in-flight slots
            slow = [asyncio.ensure_future(_slow_upload(port, slow_key, 2**20, 0.5, 2)) for _ in range(64)]
            steady = asyncio.ensure_future(_slow_upload(port, gw.key, 2**20, 0.5, 2048))
            deadline = time.monotonic() + 10
            while sum(t.done() for t in slow) < 56:  # those over the cap are answered at once
                assert time.monotonic() < deadline, f"{sum(t.done() for t in slow)} refused for the key's cap"
                await asyncio.sleep(0.05)
            assert sum(not t.done() for t in slow) == 8 and not steady.done()  # well within the grace period
            metrics = await asyncio.to_thread(requests.get, f"{gw.url}/metrics", timeout=10)
            gauges = {
                name: float(value)
                for name, value in re.findall(r"^(yolo_\w+) (\S+)$", metrics.text, re.M)
                if name in ("yolo_requests_in_flight", "yolo_memory_budget_used_bytes")
            }
            t = time.perf_counter()
            other = await asyncio.to_thread(gw.predict, "yolov8n", files={"image": tiny})
            other_s = time.perf_counter() - t
            return list(await asyncio.gather(*slow)), await steady, gauges, other.status_code, other_s

        slow, steady, gauges, other_status, other_s = asyncio.run(scenario())
        print(f"\nanother key's prediction while 9 uploads trickle: {other_status} in {other_s * 1000:.0f} ms")
        assert other_status == 200 and other_s < 10, (other_status, other_s)
        # the uploads being read held no slot, and only the bytes that had arrived (not the 1 MiB each declared)
        assert gauges["yolo_requests_in_flight"] == 0 and gauges["yolo_memory_budget_used_bytes"] < 64 * 1024, gauges

        refused = [a for s, a in slow if _status(a) == 429]
        assert len(refused) == 56, sorted(_status(a) for _, a in slow)
        assert all("At most 8 requests of one API key" in str(_json_body(a)["message"]) for a in refused)
        timed_out = [(s, a) for s, a in slow if _status(a) == 408]
        assert len(timed_out) == 8, sorted(_status(a) for _, a in slow)
        for seconds, answer in timed_out:  # cut off at the grace period: 4 bytes/s is far below 1 KiB/s
            assert grace <= seconds < grace + 10, seconds
            body = _json_body(answer)
            assert body["success"] is False and "too slowly" in str(body["message"]), body
            assert b"\r\nconnection: close\r\n" in answer.lower()
        seconds, answer = steady  # fast enough for the rate, but not done within the total deadline
        assert _status(answer) == 408 and total <= seconds < total + 10, (seconds, answer[:200])
        # the key's slots were given back
        assert (
            requests.post(
                f"{gw.url}/v1/predict/yolov8n", headers={"x-api-key": slow_key}, files={"image": tiny}, timeout=60
            ).status_code
            == 200
        )
        text = requests.get(f"{gw.url}/metrics", timeout=10).text
        assert 'yolo_rejections_total{reason="slow_body"} 9.0' in text
    finally:
        stop_gateway(gw)


@pytest.mark.load
def test_junk_after_a_jpeg_marker_never_stalls_the_event_loop(gateway: Gateway) -> None:
    """Issue #26, 5: the decode-cost estimate ran on the event loop and let Pillow look for a JPEG header a byte at
    a time through the whole file: 20 MiB of junk after FF D8 stalled every request for seconds. Junk of 0xFF bytes
    is Pillow's slowest case (about 0.45 s per MiB)."""
    junk = b"\xff\xd8" + b"\xff" * (20 * 2**20 - 1024)
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with requests.Session() as session:
            while not done.is_set():
                t = time.perf_counter()
                assert session.get(f"{gateway.url}/healthz", timeout=60).status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        statuses = [gateway.predict("yolov8n", files={"image": ("junk.jpg", junk)}).status_code for _ in range(3)]
    finally:
        done.set()
        prober.join(60)
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"\n/healthz while junk arrived: {len(ms)} probes, median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms"
    )
    assert statuses == [422, 422, 422]
    assert len(ms) >= 5 and statistics.median(ms) < 50 and ms[-1] < 1000, ms[-5:]


@pytest.mark.load
def test_one_key_holding_its_share_of_memory_gets_429_while_another_key_is_answered(
    triton: launcher.TritonServer, tmp_path: Path
) -> None:
    """RELIABILITY: one key's bytes are capped. A key whose stalled upload already holds its share of the memory
    budget (GATEWAY_MAX_KEY_BUDGET_SHARE) gets 429 for a large image at once; another key's same image is answered,
    and once the upload is gone the first key is answered too."""
    share = 16 * 2**20
    gw = start_gateway(
        triton, tmp_path, decode_budget_bytes=str(64 * 2**20), max_key_budget_share="0.25", body_timeout_s="30"
    )
    stalled = socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    try:
        _, key = create_key(gw.keys_file, KeyDraft("stalls"))
        held = 10 * 2**20  # sent at once, then nothing more: the body stays charged until its deadline
        stalled.sendall(
            (
                f"POST /v1/predict/yolov8n HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {held + 2**20}\r\n\r\n"
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
            ).encode()
            + b"\0" * held
        )
        deadline = time.monotonic() + 30
        while _metric(gw, "yolo_memory_budget_used_bytes") < held:
            assert time.monotonic() < deadline, "the stalled body never reached the budget"
            time.sleep(0.1)
        large = np.full((2000, 2000, 3), 120, np.uint8)  # 24 MB to decode: with the 10 MiB held, past the share
        png = cv2.imencode(".png", large)[1].tobytes()
        refused = gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": ("large.png", png)})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1", refused.text
        message = refused.json()["message"]
        assert "GATEWAY_MAX_KEY_BUDGET_SHARE" in message and f"{share // 2**20} MiB" in message, message
        other = gw.predict("yolov8n", files={"image": ("large.png", png)})
        assert other.status_code == 200, other.text
        stalled.close()
        deadline = time.monotonic() + 30
        while _metric(gw, "yolo_memory_budget_used_bytes") > 0:  # the gateway noticed the upload is gone
            assert time.monotonic() < deadline, "the stalled body's memory was never given back"
            time.sleep(0.1)
        again = gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": ("large.png", png)})
        assert again.status_code == 200, again.text
    finally:
        stalled.close()
        stop_gateway(gw)
