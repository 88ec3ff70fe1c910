"""Tracking across requests (`sequence`): a camera posting one frame per request gets the ids that
`model.track(frame, persist=True)` gives over the same frames, whichever replica each frame reaches.

The stores themselves (gateway/sequences/), in process and on a real Redis, with the same semantics: compare-and-set
on the frame counter (409), the cap per key (429), expiry, key isolation, Redis unreachable (503). Then over HTTP: the
in-process store behind one gateway, three gateway processes on one real Redis with the frames sent round-robin, a
frame sent while another of its sequence is being tracked (409, made certain by a `url` whose server holds the first
frame's fetch until the second is done), the cap and expiry, one key never touching another's sequence, and Redis
killed (tracking 503, plain predictions 200, tracking back once Redis is).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from gateway.errors import Conflict, ServiceUnavailable, TooManyRequests
from gateway.sequences import MemorySequences, Sequences, Stored
from gateway.sequences.redis_store import RedisSequences
from tests.clips import compare_tracks, pan_frames, ultralytics_model
from tests.conftest import Gateway, start_gateway, stop_gateway
from tritonlocal import launcher, redisserver

DETECT = "trained-yolov8n"
FRAME = "x-sequence-frame"

# --- the stores ------------------------------------------------------------------------------------------------------


class Clock:
    """A clock the in-process store reads, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    make: Callable[[float, int], Sequences]
    expire: Callable[[Sequences, float], None]  # let `seconds` pass for the store (waits on the condition in Redis)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        clock = Clock()

        def advance(store: Sequences, seconds: float) -> None:
            clock.now += seconds

        return Backend(lambda ttl, cap: MemorySequences(ttl, cap, clock), advance)
    server: redisserver.RedisServer = request.getfixturevalue("redis_server")
    import redis

    client = redis.Redis(port=server.port, password=server.password)

    def ours() -> list[bytes]:  # these tests' key ids (k1, k2) are no real key's (those are hexadecimal)
        return list(client.keys("yt:seq:k*")) + list(client.keys("yt:seqs:k*"))

    if leftover := ours():
        client.delete(*leftover)
    request.addfinalizer(client.close)

    def wait(store: Sequences, seconds: float) -> None:  # Redis' own clock: poll until the sequences have expired
        deadline = time.monotonic() + seconds + 10
        while client.keys("yt:seq:k*") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.keys("yt:seq:k*"), "the sequences did not expire"

    return Backend(lambda ttl, cap: RedisSequences(server.url, server.password, 2.0, ttl, cap), wait)


def test_store_compare_and_set_on_the_frame_counter(backend: Backend) -> None:
    async def run() -> None:
        store = backend.make(60, 10)
        try:
            assert await store.read("k1", "cam") == Stored(0, None)
            assert await store.write("k1", "cam", 0, b"one") == 1
            assert await store.read("k1", "cam") == Stored(1, b"one")
            first, second = await store.read("k1", "cam"), await store.read("k1", "cam")  # two frames at once
            assert await store.write("k1", "cam", first.frame, b"two") == 2
            with pytest.raises(Conflict) as caught:
                await store.write("k1", "cam", second.frame, b"stale")
            assert caught.value.status == 409 and "'cam'" in caught.value.message
            with pytest.raises(Conflict):
                await store.write("k1", "cam", 0, b"restart")  # a new sequence's write over a live one
            assert await store.read("k1", "cam") == Stored(2, b"two")  # neither refused write changed anything
        finally:
            await store.close()

    asyncio.run(run())


def test_store_keys_never_share_a_sequence(backend: Backend) -> None:
    async def run() -> None:
        store = backend.make(60, 10)
        try:
            await store.write("k1", "cam", 0, b"k1's")
            assert await store.read("k2", "cam") == Stored(0, None)  # the same name under another key: new
            assert await store.write("k2", "cam", 0, b"k2's") == 1
            assert await store.read("k1", "cam") == Stored(1, b"k1's")
            with pytest.raises(Conflict):
                await store.write("k2", "cam", 5, b"x")
            assert await store.read("k1", "cam") == Stored(1, b"k1's")
        finally:
            await store.close()

    asyncio.run(run())


def test_store_caps_each_keys_sequences_and_expires_them(backend: Backend) -> None:
    async def run() -> None:
        store = backend.make(1.0, 2)
        try:
            await store.write("k1", "a", 0, b"a")
            assert (await store.read("k1", "c")).frame == 0  # read while there is room ...
            await store.write("k1", "b", 0, b"b")
            with pytest.raises(TooManyRequests) as caught:  # ... the write takes the place atomically: refused now
                await store.write("k1", "c", 0, b"c")
            assert "2 sequences" in caught.value.message and "GATEWAY_MAX_SEQUENCES_PER_KEY" in caught.value.message
            assert caught.value.headers["Retry-After"] == "1"
            with pytest.raises(TooManyRequests):
                await store.read("k1", "c")
            assert await store.write("k1", "a", 1, b"a2") == 2  # a sequence it has continues
            assert await store.write("k2", "c", 0, b"other key") == 1  # the cap is per key
            await asyncio.to_thread(backend.expire, store, 1.0)
            assert await store.read("k1", "a") == Stored(0, None)  # expired: a new sequence of the same name
            assert await store.write("k1", "c", 0, b"c") == 1  # and the places are free again
            assert await store.write("k1", "a", 0, b"a") == 1
        finally:
            await store.close()

    asyncio.run(run())


def test_redis_store_unreachable_is_503_within_its_bound() -> None:
    port = redisserver.free_port()  # nothing listens there

    async def run() -> None:
        store = RedisSequences(f"redis://127.0.0.1:{port}/0", "", 0.25, 60, 10)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServiceUnavailable) as caught:
                await store.read("k1", "cam")
            assert time.monotonic() - t0 < 5
            assert "predictions without 'sequence' keep working" in caught.value.message
            with pytest.raises(ServiceUnavailable):
                await store.write("k1", "cam", 0, b"x")
        finally:
            await store.close()

    asyncio.run(run())


# --- over HTTP -------------------------------------------------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _frame(
    base: str, key: str, image: bytes | None, sequence: str, model: str = "yolov8n", **fields: str
) -> requests.Response:
    """One frame of `sequence` to the gateway at `base` (an upload, or `url=` in fields)."""
    files = {"image": ("frame.png", image)} if image is not None else None
    data = {"sequence": sequence, "iou": "0.7", **fields}
    return requests.post(f"{base}/v1/predict/{model}", headers={"x-api-key": key}, files=files, data=data, timeout=120)


def _reference(trained: Path, frames: list[np.ndarray], tracker: str) -> list[Any]:
    yolo = ultralytics_model(trained / DETECT / "source.onnx")
    return [
        yolo.track(f, tracker=f"{tracker}.yaml", persist=True, imgsz=640, iou=0.7, rect=True, verbose=False)[
            0
        ].summary()
        for f in frames
    ]


def _run_sequence(urls: list[str], key: str, frames: list[np.ndarray], name: str, tracker: str) -> list[Any]:
    """Each frame in its own request, round-robin over `urls`; each answer's rows."""
    out = []
    for i, frame in enumerate(frames):
        r = _frame(urls[i % len(urls)], key, _png(frame), name, DETECT, tracker=tracker)
        assert r.status_code == 200, r.text
        assert r.headers[FRAME] == str(i + 1)
        out.append(r.json()["data"])
    return out


@pytest.mark.trained
def test_sequence_in_process_ids_are_model_track_persist(gateway: Gateway, trained: Path) -> None:
    frames = pan_frames("zidane", 24)
    ours = _run_sequence([gateway.url], gateway.key, frames, "file-cam", "bytetrack")
    figures = compare_tracks(ours, _reference(trained, frames, "bytetrack"), (frames[0].shape[1], frames[0].shape[0]))
    assert figures["ids"] >= 2, figures


@dataclass
class Stack:
    redis: redisserver.RedisServer
    gateways: list[Gateway]
    keys: list[str]  # two keys in Redis

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]


def _redis_keys(server: redisserver.RedisServer, count: int) -> list[str]:
    from gateway.keys.auth import KeyDraft
    from gateway.keys.redis_store import RedisStore

    async def make() -> list[str]:
        store = RedisStore(server.url, server.password, timeout_s=2.0)
        try:
            return [(await store.create_key(KeyDraft(f"sequences-{i}")))[1] for i in range(count)]
        finally:
            await store.close()

    return asyncio.run(make())


@pytest.fixture(scope="module")
def stack(
    triton: launcher.TritonServer, redis_server: redisserver.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Three gateway processes on one real Redis (they may fetch `url`s from localhost: the 409 test's server)."""
    env = {"redis_url": redis_server.url, "redis_password": redis_server.password, "url_allow_hosts": "localhost"}
    gateways = [start_gateway(triton, tmp_path_factory.mktemp(f"seq-gw{i}"), **env) for i in range(3)]
    yield Stack(redis_server, gateways, _redis_keys(redis_server, 2))
    for gw in gateways:
        stop_gateway(gw)


@pytest.mark.trained
@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_sequence_round_robin_over_three_gateways_is_model_track_persist(
    stack: Stack, trained: Path, tracker: str
) -> None:
    """Frames round-robin over three replicas sharing Redis: each continues where the previous one left the tracks
    (BoT-SORT's state carries the previous frame, for its camera motion), and the ids are a single model.track()'s."""
    frames = pan_frames("bus", 30)
    ours = _run_sequence(stack.urls, stack.keys[0], frames, f"cam-{tracker}", tracker)
    figures = compare_tracks(ours, _reference(trained, frames, tracker), (frames[0].shape[1], frames[0].shape[0]))
    print(f"sequence over 3 gateways, {tracker}: {figures}")  # shown with -s
    assert figures["ids"] >= 2, figures


class _HeldImage(http.server.BaseHTTPRequestHandler):
    """Serves `image` once `release` is set; sets `arrived` when a request comes (the gateway has read the sequence
    by then: the sequence is read before the image is fetched)."""

    image = b""
    arrived = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).arrived.set()
        type(self).release.wait(60)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def file_gateway(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway in file mode (the in-process store) that may fetch `url`s from localhost."""
    gw = start_gateway(triton, tmp_path_factory.mktemp("seq-file"), url_allow_hosts="localhost")
    yield gw
    stop_gateway(gw)


@pytest.mark.parametrize("mode", ["file", "redis"])
def test_a_frame_tracked_while_another_of_its_sequence_was_is_409(
    request: pytest.FixtureRequest, images: dict[str, Path], mode: str
) -> None:
    """Frame A reads the sequence, then waits for its image (held by the test's server); frame B of the same
    sequence is tracked meanwhile (200). A then gets 409, not a track continued from a state that is no longer the
    sequence's; the sequence goes on from B."""
    if mode == "file":
        gw: Gateway = request.getfixturevalue("file_gateway")
        urls, key = [gw.url, gw.url], gw.key
    else:
        stack: Stack = request.getfixturevalue("stack")
        urls, key = stack.urls[:2], stack.keys[0]
    image = images["bus"].read_bytes()
    _HeldImage.image = image
    _HeldImage.arrived.clear()
    _HeldImage.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeldImage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"held-{mode}"
    try:
        assert _frame(urls[0], key, image, name).headers[FRAME] == "1"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(_frame, urls[0], key, None, name, url=f"http://localhost:{server.server_port}/f.png")
            if not _HeldImage.arrived.wait(60):
                raise AssertionError(f"the gateway never fetched the held frame: {held.result(1).text}")
            meanwhile = _frame(urls[1], key, image, name)
            assert meanwhile.status_code == 200 and meanwhile.headers[FRAME] == "2", meanwhile.text
            _HeldImage.release.set()
            late = held.result(120)
        assert late.status_code == 409, late.text
        assert late.json()["success"] is False and f"Sequence '{name}' moved on" in late.json()["message"]
        after = _frame(urls[0], key, image, name)
        assert after.status_code == 200 and after.headers[FRAME] == "3"
    finally:
        _HeldImage.release.set()
        server.shutdown()


@pytest.fixture(scope="module", params=["file", "redis"])
def small(
    request: pytest.FixtureRequest, triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str, str]]:
    """A gateway whose keys hold one sequence each, for 1.5 s: (gateway, a key, another key)."""
    env = {"sequence_ttl_s": "1.5", "max_sequences_per_key": "1"}
    if request.param == "redis":
        server: redisserver.RedisServer = request.getfixturevalue("redis_server")
        env |= {"redis_url": server.url, "redis_password": server.password}
    gw = start_gateway(triton, tmp_path_factory.mktemp(f"seq-small-{request.param}"), **env)
    if request.param == "redis":
        keys = _redis_keys(request.getfixturevalue("redis_server"), 2)
    else:
        from gateway.keys.auth import KeyDraft, create_key

        keys = [gw.key, create_key(gw.keys_file, KeyDraft("second"))[1]]
    yield gw, keys[0], keys[1]
    stop_gateway(gw)


def test_sequence_cap_is_429_and_a_sequence_ends_after_its_idle_time(
    small: tuple[Gateway, str, str], images: dict[str, Path]
) -> None:
    gw, key, other = small
    image = images["zidane"].read_bytes()
    first = _frame(gw.url, key, image, "a")
    assert first.status_code == 200 and first.headers[FRAME] == "1"
    assert first.json()["data"], "nothing detected: the ids below would prove nothing"
    assert [row["track_id"] for row in first.json()["data"]] == list(range(1, len(first.json()["data"]) + 1))
    assert _frame(gw.url, key, image, "a").headers[FRAME] == "2"  # within its idle time: continued
    last = time.monotonic()
    refused = _frame(gw.url, key, image, "b")
    assert refused.status_code == 429 and "already tracks 1 sequences" in refused.json()["message"], refused.text
    assert refused.headers["retry-after"] == "2"
    assert _frame(gw.url, other, image, "b").status_code == 200  # the cap is per key
    # "a" ends 1.5 s after its last frame; until then "b" is refused (and a refusal does not keep "a" alive)
    deadline = time.monotonic() + 20
    while (r := _frame(gw.url, key, image, "b")).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    waited = time.monotonic() - last
    assert r.status_code == 200 and r.headers[FRAME] == "1", r.text
    assert waited >= 1.4, f"a sequence ended {waited:.2f} s after its last frame, before its 1.5 s"
    deadline = time.monotonic() + 20  # and "b" in turn: then "a" starts over, at frame 1 with ids from 1
    while (r := _frame(gw.url, key, image, "a")).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.status_code == 200 and r.headers[FRAME] == "1", r.text
    assert [row["track_id"] for row in r.json()["data"]] == [row["track_id"] for row in first.json()["data"]]


def test_one_key_never_reads_or_advances_anothers_sequence(stack: Stack, images: dict[str, Path]) -> None:
    image = images["bus"].read_bytes()
    mine, theirs = stack.keys
    for i in range(3):
        assert _frame(stack.urls[i], mine, image, "shared-name").headers[FRAME] == str(i + 1)
    other = _frame(stack.urls[1], theirs, image, "shared-name")
    assert other.status_code == 200 and other.headers[FRAME] == "1"  # the same name is a new sequence for them
    ids = [row["track_id"] for row in other.json()["data"]]
    assert ids and ids == list(range(1, len(ids) + 1))  # its own ids, from 1, as a first frame's
    assert _frame(stack.urls[2], mine, image, "shared-name").headers[FRAME] == "4"  # untouched by theirs


def test_redis_down_refuses_tracking_with_503_and_plain_predictions_keep_working(
    stack: Stack, images: dict[str, Path]
) -> None:
    image, key, url = images["tiny"].read_bytes(), stack.keys[1], stack.urls[0]
    plain = functools.partial(
        requests.post, f"{url}/v1/predict/yolov8n", headers={"x-api-key": key}, files={"image": image}, timeout=60
    )
    assert plain().status_code == 200  # the key is in this replica's cache from now on
    assert _frame(url, key, image, "while-down").status_code == 200
    stack.redis.kill()
    try:
        tracked = _frame(url, key, image, "while-down")
        assert tracked.status_code == 503 and "predictions without 'sequence' keep working" in tracked.text
        assert tracked.headers["retry-after"] == "2"
        assert plain().status_code == 200
        for path in ("/v1/streams", "/v1/jobs"):  # the routes of shared work: 503 naming Redis, not a bare 500
            down = requests.get(f"{url}{path}", headers={"x-api-key": key}, timeout=60)
            assert down.status_code == 503 and "shared state (Redis) is unreachable" in down.json()["message"], path
            assert down.headers["retry-after"] == "5"
    finally:
        stack.redis.restart()
    deadline = time.monotonic() + 15
    while (r := _frame(url, key, image, "while-down")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 200, r.text
