"""A tracked live stream against Ultralytics: `track=true` on a stream gives the track ids and boxes that
`YOLO(<the served source.onnx>).track(frame, persist=True)` gives when fed exactly the frames the stream analysed
(the events' frame indices: a live source drops frames when inference is slower, newest wins), for ByteTrack and
BoT-SORT; the stream's arguments follow the video routes' (`tracker`, confidence 0.1 when tracking, 422 for a
classifier)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from tests import sources
from tests.clips import compare_tracks, ultralytics_model, write_clip
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_streams import Api, poll
from tritonlocal import launcher

MODEL = "trained-yolov8n"
FRAMES = 48
STRIDE = 2  # every other frame selected: 24 at most analysed, fewer when inference is slower than the source


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(triton, tmp_path_factory.mktemp("tracked-gw"), url_allow_hosts="127.0.0.1")
    yield gateway
    stop_gateway(gateway)


class Held:
    """The clip served once over HTTP on loopback, its answer held until `go` (so that the test has subscribed to the
    stream's events before its first frame is read); later requests get 404 (the stream, at the file's end,
    reconnects and finds nothing more)."""

    def __init__(self, path: Path) -> None:
        self.go = threading.Event()
        self.served = 0

        def answer() -> sources.Answer:
            self.served += 1
            if self.served > 1 or not self.go.wait(60):
                return 404, {}, b""
            return 200, {"Content-Type": "video/x-msvideo"}, path.read_bytes()

        self.site = sources.Site({f"/{path.name}": answer})
        self.url = f"{self.site.url}/{path.name}"

    def stop(self) -> None:
        self.go.set()
        self.site.stop()


def _events(api: Api, id: str, held: Held, seconds: float) -> list[dict[str, Any]]:
    """Every frame event of stream `id` for the file's frames: subscribed first, then the source let go; read until
    every selected frame was analysed or passed over (the stream's counters) and its event came."""
    out: list[dict[str, Any]] = []
    selected = len(range(STRIDE - 1, FRAMES, STRIDE))  # the reader selects frame index i when (i + 1) % stride == 0

    def done() -> bool:
        s = api.get(id)
        passed = s["frames_dropped"] + s["frames_failed"] + s["frames_rate_limited"]
        return bool(s["frames_processed"] + passed >= selected and s["frames_processed"] <= len(out))

    with api.call("GET", f"/v1/streams/{id}/events", stream=True, timeout=seconds) as r:
        assert r.status_code == 200, r.text
        kind = ""
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "state":
                held.go.set()  # subscribed: every frame analysed from now on is an event
                kind = ""
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if event["frame"] >= FRAMES:  # (a reconnect: the file is served once)
                    break
                out.append(event)
            if held.go.is_set() and done():
                break
    assert out, "no frame events"
    return out


def _decoded(path: Path) -> list[NDArray[np.uint8]]:
    """The clip's frames as FFmpeg decodes them (what the stream's reader gets)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.mark.trained
@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_tracked_stream_ids_and_boxes_are_ultralytics_track_on_the_analysed_frames(
    gw: Gateway, trained: Path, tmp_path: Path, tracker: str
) -> None:
    from gateway.keys.auth import KeyDraft, create_key

    _, key = create_key(gw.keys_file, KeyDraft(f"tracked-{tracker}"))
    api = Api(gw.url, key)
    clip = write_clip(tmp_path / "bus.avi", "bus", FRAMES)
    held = Held(clip)
    try:
        stream = api.create(
            model=MODEL, source=held.url, track=True, tracker=tracker, size=640, iou=0.7, vid_stride=STRIDE
        )
        assert stream["track"] is True and stream["tracker"] == tracker
        events = _events(api, stream["id"], held, 120)
    finally:
        held.stop()
        api.call("DELETE", f"/v1/streams/{stream['id']}")
    frames = _decoded(clip)
    assert len(frames) == FRAMES
    indices = [e["frame"] for e in events]
    assert indices == sorted(set(indices)) and all((i + 1) % STRIDE == 0 for i in indices), indices
    yolo = ultralytics_model(trained / MODEL / "source.onnx")
    options = {"tracker": f"{tracker}.yaml", "persist": True, "imgsz": 640, "iou": 0.7, "rect": True, "verbose": False}
    ref = [yolo.track(frames[i], **options)[0].summary() for i in indices]  # conf: model.track()'s 0.1, as ours
    h, w = frames[0].shape[:2]
    figures = compare_tracks([e["data"] for e in events], ref, (w, h))
    print(f"stream {tracker}: {len(indices)} frames analysed {indices}: {figures}")  # shown with -s
    assert len(indices) >= 5 and figures["ids"] >= 2, figures


def test_stream_tracking_arguments_are_the_video_routes(gw: Gateway) -> None:
    """`tracker` alone tracks (as on videos), a bad tracker is 400 naming it, a classifier is 422."""
    api = Api(gw.url, gw.key)
    source = "http://127.0.0.1:1025/x"  # (nothing listens: these streams never read a frame)
    r = api.call("POST", "/v1/streams", json={"source": source, "model": "yolov8n-cls", "track": True})
    assert r.status_code == 422 and "'track'" in r.json()["message"] and r.json()["success"] is False, r.text
    r = api.call("POST", "/v1/streams", json={"source": source, "model": "yolov8n", "tracker": "sort"})
    assert r.status_code == 400 and "'tracker'" in r.json()["message"], r.text
    made = api.create(source=source, tracker="botsort.yaml")
    assert made["track"] is True and made["tracker"] == "botsort"
    plain = api.create(source=source)
    assert plain["track"] is False and plain["tracker"] is None
    for stream in (made, plain):
        assert api.call("DELETE", f"/v1/streams/{stream['id']}").status_code == 200
    poll("both deleted", lambda: not api.call("GET", "/v1/streams").json()["data"], 30)
