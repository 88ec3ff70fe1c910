"""Live streams against real sources on loopback (ffmpeg's HLS and MJPEG, GStreamer's RTSP server), a real gateway
and Triton: events equal a video's frames, newest frame wins, a source that drops is reconnected, webhooks are
signed, batched and retried without slowing the stream. (Three replicas and Redis: tests/test_streams_redis.py.)"""

from __future__ import annotations

import http.server
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.work import signing
from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tritonlocal import launcher


def poll(what: str, check: Callable[[], Any], seconds: float) -> Any:
    """`check()`'s first truthy answer within `seconds`, polled; fails naming `what` (and the last answer)."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {seconds} s (last: {last})")


@dataclass
class Api:
    url: str
    key: str

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"x-api-key": self.key, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.call("POST", "/v1/streams", json={"model": "yolov8n", **body})
        assert r.status_code == 201, r.text
        return r.json()["data"]

    def get(self, id: str) -> dict[str, Any]:
        r = self.call("GET", f"/v1/streams/{id}")
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def events(self, id: str, count: int, seconds: float) -> list[dict[str, Any]]:
        """The first `count` frame events of stream `id` (Server-Sent Events), within `seconds`."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        with self.call("GET", f"/v1/streams/{id}/events", stream=True) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
            kind = "message"
            for line in r.iter_lines(decode_unicode=True):
                if time.monotonic() > deadline:
                    break
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    if kind == "message":
                        out.append(json.loads(line[6:]))
                        if len(out) >= count:
                            break
                    kind = "message"
        assert len(out) >= count, f"{len(out)} events of {count} within {seconds} s"
        return out


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        triton,
        tmp_path_factory.mktemp("streams-gw"),
        url_allow_hosts="127.0.0.1",
        max_streams_per_key="3",
        webhook_backoff_s="0.3",
        webhook_timeout_s="1",
        webhook_batch_frames="5",
        webhook_batch_s="0.5",
        stream_read_timeout_s="2",
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def api(gw: Gateway) -> Api:
    from gateway.keys.auth import KeyDraft, create_key

    _, key = create_key(gw.keys_file, KeyDraft("streams"))  # a key of its own per test: its own streams cap
    return Api(gw.url, key)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sources.need("ffmpeg")
    return sources.clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=3)


def test_hls_stream_events_equal_the_video_answers_frames(api: Api, clip: Path, tmp_path: Path) -> None:
    served = sources.hls(tmp_path / "hls", clip)
    try:
        stream = api.create(source=served.url, size=320)
        assert stream["state"] in ("starting", "connecting", "running") and stream["source"] == served.url
        events = api.events(stream["id"], 8, 60)
    finally:
        served.stop()
    with clip.open("rb") as f:
        r = requests.post(f"{api.url}/v1/predict/yolov8n", headers={"x-api-key": api.key},
                          files={"image": ("clip.mp4", f)}, data={"size": "320"}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    frames = {f["frame"]: f["data"] for f in r.json()["data"]}
    compared = [e for e in events if e["frame"] in frames]
    assert len(compared) >= 8 and any(e["data"] for e in compared)
    for event in compared:
        assert set(event) == {"frame", "time", "data"}
        assert event["data"] == frames[event["frame"]], event["frame"]
    assert api.call("DELETE", f"/v1/streams/{stream['id']}").status_code == 200


def test_mjpeg_source_killed_reports_reconnecting_then_resumes(api: Api, clip: Path) -> None:
    served = sources.mjpeg(clip)
    port = served.port
    stream = api.create(source=served.url, fps=5)
    try:
        poll("frames analysed", lambda: api.get(stream["id"])["frames_processed"] >= 3, 60)
        served.stop()  # the source dies mid-stream
        gone = poll("state reconnecting", lambda: (s := api.get(stream["id"]))["state"] == "reconnecting" and s, 30)
        assert gone["last_error"]
        served = sources.mjpeg(clip, port)  # the camera comes back on the same address
        before = gone["frames_processed"]
        back = poll(
            "resumed", lambda: (s := api.get(stream["id"]))["frames_processed"] > before + 2 and s["state"] == "running"
            and s, 60,
        )  # fmt: skip
        assert back["reconnects"] >= 1 and back["last_error"] is None
        assert 0 < back["processed_fps"] <= 7  # fps=5 caps the frames analysed
    finally:
        served.stop()
        api.call("DELETE", f"/v1/streams/{stream['id']}")


def test_rtsp_stream_is_read_newest_frame_first(api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources.need_rtsp()
    served = sources.rtsp(tmp_path)
    try:
        stream = api.create(source=served.url)
        events = api.events(stream["id"], 5, 60)
        assert [e["frame"] for e in events] == sorted({e["frame"] for e in events})
        state = poll("rates measured", lambda: (s := api.get(stream["id"]))["frames_read"] > 50 and s, 60)
    finally:
        served.stop()
    api.call("DELETE", f"/v1/streams/{stream['id']}")
    # 25 fps in, one inference at a time: whatever is not analysed is dropped, and the lag stays bounded
    assert state["input_fps"] > 10 and state["frames_read"] >= state["frames_processed"] + state["frames_dropped"]
    assert state["lag_ms"] < 5000
    with capsys.disabled():
        rates = f"input {state['input_fps']} fps, processed {state['processed_fps']} fps, lag {state['lag_ms']} ms"
        print(f"\n[rtsp 640x360 25 fps] {rates}, {state['frames_dropped']} of {state['frames_read']} frames dropped")


def test_tracked_stream_rows_carry_track_ids_after_the_box(api: Api, clip: Path, tmp_path: Path) -> None:
    served = sources.hls(tmp_path / "hls", clip)
    try:
        stream = api.create(source=served.url, track=True)
        assert stream["track"] is True
        events = api.events(stream["id"], 10, 60)
    finally:
        served.stop()
        api.call("DELETE", f"/v1/streams/{stream['id']}")
    rows = [row for e in events for row in e["data"]]
    tracked = [row for row in rows if "track_id" in row]
    assert tracked, rows[:5]
    for row in tracked:
        keys = list(row)
        assert keys[keys.index("box") + 1] == "track_id" and isinstance(row["track_id"], int) and row["track_id"] >= 1


def test_stream_requests_are_checked_and_capped_per_key(api: Api, clip: Path) -> None:
    cases = [
        ({"model": "yolov8n"}, 400, "'source'"),
        ({"source": "ftp://example.com/x", "model": "yolov8n"}, 400, "rtsp://"),
        ({"source": "rtsp://10.0.0.1/live", "model": "yolov8n"}, 400, "public address"),
        ({"source": "http://127.0.0.1:1025/x", "model": "nosuchmodel"}, 404, "nosuchmodel"),
        ({"source": "http://127.0.0.1:1025/x", "model": "yolov8n", "fps": 500}, 400, "'fps'"),
        ({"source": "http://127.0.0.1:1025/x", "model": "yolov8n", "colour": 1}, 400, "'colour'"),
        ({"source": "http://127.0.0.1:1025/x", "model": "yolov8n", "confidence": 7}, 400, "'confidence'"),
        ({"source": "http://127.0.0.1:1025/x", "model": "yolov8n-cls", "track": True}, 422, "'track'"),
        (
            {"source": "http://127.0.0.1:1025/x", "model": "yolov8n", "webhook": "http://169.254.169.254/"},
            400,
            "webhook",
        ),
    ]
    for body, status, words in cases:
        r = api.call("POST", "/v1/streams", json=body)
        assert r.status_code == status and words in r.json()["message"], (body, r.text)
        assert r.json()["success"] is False
    assert api.call("POST", "/v1/streams", headers={"x-api-key": "yk_nope_nope"}, json={}).status_code == 401
    made = [api.create(source=f"http://127.0.0.1:{sources.free_port()}/x") for _ in range(3)]  # (nothing listens)
    r = api.call("POST", "/v1/streams", json={"source": "http://127.0.0.1:1025/x", "model": "yolov8n"})
    assert r.status_code == 429 and "GATEWAY_MAX_STREAMS_PER_KEY" in r.json()["message"]
    listed = api.call("GET", "/v1/streams").json()["data"]
    assert sorted(s["id"] for s in listed) == sorted(s["id"] for s in made)
    poll("reconnecting", lambda: api.get(made[0]["id"])["state"] == "reconnecting", 30)
    for stream in made:
        assert api.call("DELETE", f"/v1/streams/{stream['id']}").json()["data"]["state"] == "deleted"
        assert api.call("GET", f"/v1/streams/{stream['id']}").status_code == 404
    other = Api(api.url, api.key.replace(api.key.split("_")[2], "x" * 32))
    assert other.call("GET", f"/v1/streams/{made[0]['id']}").status_code == 401


@dataclass
class Receiver:
    """A webhook receiver on loopback: records every POST; answers 500 to the first `fail` attempts of each message
    (by its webhook-id), and waits `hang` seconds before answering when set."""

    fail: int = 0
    hang: float = 0.0
    got: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                header = {k.lower(): v for k, v in self.headers.items()}
                receiver.got.append((time.monotonic(), header, body))
                if receiver.hang:
                    time.sleep(receiver.hang)
                tries = sum(h["webhook-id"] == header["webhook-id"] for _, h, _ in receiver.got)
                self.send_response(500 if tries <= receiver.fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def attempts(receiver: Receiver, n: int) -> list[tuple[float, dict[str, str], bytes]]:
    """The attempts at the `n`-th message the receiver saw (by webhook-id), in order."""
    ids = list(dict.fromkeys(h["webhook-id"] for _, h, _ in receiver.got))
    return [got for got in receiver.got if len(ids) > n and got[1]["webhook-id"] == ids[n]]


def test_webhooks_are_signed_batched_and_retried_with_backoff(api: Api, clip: Path) -> None:
    receiver = Receiver(fail=2)
    hook = receiver.start()
    served = sources.mjpeg(clip)
    try:
        r = api.call("POST", "/v1/streams", json={"source": served.url, "model": "yolov8n", "webhook": hook})
        assert r.status_code == 201, r.text
        stream, secret = r.json()["data"], r.json()["data"]["webhook_secret"]
        assert secret.startswith("whsec_") and stream["webhook"] == hook.split("?")[0]
        poll("a message delivered on its third attempt", lambda: len(attempts(receiver, 0)) >= 3, 60)
        # a second stream of the same key: the secret exists, so it is not shown again
        again = api.call("POST", "/v1/streams", json={"source": served.url, "model": "yolov8n", "webhook": hook})
        assert again.status_code == 201 and "webhook_secret" not in again.json()["data"]
        api.call("DELETE", f"/v1/streams/{again.json()['data']['id']}")
    finally:
        served.stop()
        api.call("DELETE", f"/v1/streams/{stream['id']}")
        receiver.stop()
    (t0, _, b0), (t1, _, b1), (t2, _, b2) = attempts(receiver, 0)[:3]
    assert b0 == b1 == b2  # one message, retried whole under its webhook-id
    assert t1 - t0 >= 0.3 * 0.9 and t2 - t1 >= 0.6 * 0.9  # GATEWAY_WEBHOOK_BACKOFF_S, doubled
    for _, header, body in receiver.got:
        assert signing.verify(secret, header, body)
        assert not signing.verify(secret, header, body + b" ")
        assert not signing.verify(secret, header, body, now=int(header["webhook-timestamp"]) + 301)
    payload = json.loads(b0)
    assert payload["type"] == "stream.frames" and payload["stream"] == stream["id"]
    assert 1 <= len(payload["frames"]) <= 5 and {"frame", "time", "data"} == set(payload["frames"][0])


def test_a_hanging_webhook_receiver_never_slows_the_stream(api: Api, clip: Path) -> None:
    receiver = Receiver(hang=3.0)  # past GATEWAY_WEBHOOK_TIMEOUT_S (1 s): every delivery times out
    hook = receiver.start()
    served = sources.mjpeg(clip)
    try:
        stream = api.create(source=served.url, webhook=hook, fps=5)
        poll("a delivery attempt", lambda: receiver.got, 60)
        start = api.get(stream["id"])["frames_processed"]
        began = time.monotonic()
        poll("frames go on while deliveries hang", lambda: api.get(stream["id"])["frames_processed"] >= start + 10, 30)
        took = time.monotonic() - began
    finally:
        served.stop()
        api.call("DELETE", f"/v1/streams/{stream['id']}")
        receiver.stop()
    assert took < 10  # 10 frames at fps=5 is 2 s of stream; hung deliveries would take 3 s each


def _threads(pid: int) -> dict[int, int]:
    """The process's threads: thread id -> niceness (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended while we listed them
            continue
        out[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return out


def test_readers_take_their_share_only_and_stop_with_their_stream_and_the_gateway(
    triton: launcher.TritonServer, tmp_path: Path
) -> None:
    sources.need_rtsp()
    gateway = start_gateway(triton, tmp_path / "gw", url_allow_hosts="127.0.0.1", max_streams="2")
    served, hls = sources.rtsp(tmp_path), None
    try:
        api = Api(gateway.url, gateway.key)
        pid = gateway.process.pid
        warm = api.create(source=served.url)  # the inference path's own threads (gRPC) exist once a frame went through
        poll("the first stream analysing", lambda: api.get(warm["id"])["frames_processed"] >= 3, 60)
        before = _threads(pid)
        hls = sources.hls(tmp_path / "hls", sources.clip(tmp_path / "long.mp4", seconds=30))
        second = api.create(source=hls.url)  # H.264, which FFmpeg would decode with a thread per CPU
        poll("the second stream analysing", lambda: api.get(second["id"])["frames_processed"] >= 3, 60)
        added = {tid: nice for tid, nice in _threads(pid).items() if tid not in before}
        base = before[pid]
        # a reader is one thread at nice +10 and one FFmpeg decoding thread at most (FFmpeg's default: one per CPU)
        assert 1 <= len(added) <= 2 and all(nice >= base + 10 for nice in added.values()), (added, base)
        third = api.call("POST", "/v1/streams", json={"source": served.url, "model": "yolov8n"})
        assert third.status_code == 503 and "GATEWAY_MAX_STREAMS" in third.json()["message"], third.text
        assert api.call("DELETE", f"/v1/streams/{second['id']}").status_code == 200
        poll("the deleted stream's threads ended", lambda: not set(added) & set(_threads(pid)), 30)
        assert api.get(warm["id"])["state"] == "running"
        gateway.process.terminate()  # with a stream running: its reader is stopped, the process ends cleanly
        began = time.monotonic()
        assert gateway.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        stopped = time.monotonic() - began
    finally:
        served.stop()
        if hls is not None:
            hls.stop()
        stop_gateway(gateway)
    log = gateway.log_path.read_text()
    assert "Application shutdown complete" in log, log[-3000:]  # the lifespan's end: every run and reader stopped
    assert "Traceback" not in log and "failed" not in log, log[-3000:]
    assert stopped < 20, stopped  # runs get 5 s to end (gateway/work/owner.py), a reader 1 s to join


@pytest.mark.parametrize("field", ["source", "webhook"])
def test_a_url_whose_host_does_not_resolve_is_a_400_naming_it(api: Api, field: str) -> None:
    """Found by schemathesis (tests/test_fuzz.py): it was a 502, though nothing was fetched; the client's URL is wrong.
    `.invalid` never resolves (RFC 2606): no connection is attempted anywhere."""
    body = {"source": "rtsp://no-such-host.invalid/live", "model": "yolov8n"}
    if field == "webhook":
        body = {"source": "http://127.0.0.1:1025/x", "model": "yolov8n", "webhook": "https://no-such-host.invalid/h"}
    r = api.call("POST", "/v1/streams", json=body)
    message = r.json()["message"]
    assert r.status_code == 400 and f"The {field} URL's host" in message and "resolved" in message, r.text
    assert api.call("GET", "/v1/streams").json()["data"] == [], "no stream was made"


def test_a_stream_request_reads_json_numbers_as_json_does() -> None:
    """46.0 is an integer in JSON (and in /openapi.json's schema): max_det 46.0 and classes [0.0, 2.0] are read as
    the integers they are, not refused as "46.0"."""
    from gateway.arguments import parse_args
    from gateway.live.request import parse

    body = {"source": "rtsp://camera.example/live", "model": "yolov8n", "max_det": 46.0, "classes": [0.0, 2.0],
            "confidence": 1.0, "size": 320}  # fmt: skip
    request = parse(json.dumps(body).encode())
    assert request.fields["max_det"] == "46" and request.fields["classes"] == "0,2"
    args = parse_args(request.fields, 640)
    assert args.max_det == 46 and args.classes == (0, 2) and args.confidence == 1.0 and args.size == 320
