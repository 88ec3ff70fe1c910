"""Tracking through the API (`track`, `tracker`): uploaded videos, streamed or not, on both routes, against
`YOLO(<the served source.onnx>).track(video, persist=True)` on clips with real motion (a slow pan over a real photo
with people), for detect, segment, pose and obb; images without `sequence`; what tracking refuses.

Across requests (`sequence`): tests/test_sequences.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.clips import compare_tracks, ultralytics_model, write_clip
from tests.conftest import Gateway
from tests.reference import image_wh

DETECT, SEGMENT, POSE = "trained-yolov8n", "trained-yolov8n-seg", "trained-yolo11n-pose"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("track-clips")
    return {"bus": write_clip(out / "bus.avi", "bus", 48), "zidane": write_clip(out / "zidane.avi", "zidane", 40)}


def _track(gw: Gateway, route: str, model: str, path: Path, stream: bool, **fields: Any) -> list[list[dict[str, Any]]]:
    """Each frame's rows as the gateway answers a video with track=true (streamed: read from the NDJSON lines)."""
    part = "image" if route == "v1" else "file"
    url = f"{gw.url}/v1/predict/{model}" if route == "v1" else f"{gw.url}/api/models/{model}/predict"
    data = {"track": "true", "stream": str(stream).lower(), **{k: str(v) for k, v in fields.items()}}
    files = {part: (path.name, path.read_bytes())}
    r = requests.post(url, headers={"x-api-key": gw.key}, files=files, data=data, timeout=600)
    assert r.status_code == 200, r.text
    key = "data" if route == "v1" else "results"
    if stream:
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[-1]["done"] is True and lines[-1]["success"] is True, lines[-1]
        return [line[key] for line in lines[:-1]]
    body = r.json()
    return [frame[key] for frame in (body["data"] if route == "v1" else body["images"])]


def _reference(repository: Path, model: str, path: Path, tracker: str, size: int, iou: float = 0.7) -> list[Any]:
    yolo = ultralytics_model(repository / model / "source.onnx")
    results = yolo.track(
        str(path), tracker=f"{tracker}.yaml", persist=True, imgsz=size, iou=iou, rect=True, verbose=False
    )
    return [r.summary() for r in results]


def _wh(path: Path) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


@pytest.mark.trained
@pytest.mark.parametrize(
    "model,clip,tracker,route,stream",
    [
        (DETECT, "bus", "bytetrack", "v1", False),
        (DETECT, "bus", "bytetrack", "v2", True),
        (DETECT, "zidane", "botsort", "v1", True),
        (DETECT, "bus", "botsort", "v2", False),
        (SEGMENT, "bus", "bytetrack", "v1", True),
        (POSE, "zidane", "bytetrack", "v2", False),
    ],
)
def test_video_track_ids_are_ultralytics_track_ids(
    gateway: Gateway,
    trained: Path,
    clips: dict[str, Path],
    model: str,
    clip: str,
    tracker: str,
    route: str,
    stream: bool,
) -> None:
    """Ids equal up to a one-to-one relabelling on >= 99 % of matched detections, boxes (the tracker's), classes,
    scores, masks and keypoints within the parity tolerances, `track_id` right after `box`; with no confidence
    given, both sides run at model.track()'s 0.1."""
    path = clips[clip]
    ours = _track(gateway, route, model, path, stream, tracker=tracker, iou=0.7, size=640)
    ref = _reference(trained, model, path, tracker, 640)
    figures = compare_tracks(ours, ref, _wh(path))
    print(f"{model} {clip} {tracker} {route} stream={stream}: {figures}")  # shown with -s
    assert figures["ids"] >= 2, figures  # several objects tracked: the ids have something to disagree about


def test_obb_video_track_ids_are_ultralytics_track_ids(gateway: Gateway, repository: Path, tmp_path: Path) -> None:
    """Oriented boxes (the rotated-IoU association), on the obb fixture model: the pretrained DOTA model finds
    almost nothing in street photos, the fixture finds boxes everywhere (ids churn, which tests the ids harder)."""
    path = write_clip(tmp_path / "bus.avi", "bus", 24)
    ours = _track(gateway, "v1", "yolov8n-obb", path, False, iou=0.7, size=320, confidence=0.3)
    yolo = ultralytics_model(repository / "yolov8n-obb" / "source.onnx")
    ref = [
        r.summary()
        for r in yolo.track(
            str(path), tracker="bytetrack.yaml", persist=True, imgsz=320, conf=0.3, iou=0.7, rect=True, verbose=False
        )
    ]
    figures = compare_tracks(ours, ref, _wh(path))
    print(f"yolov8n-obb bus bytetrack: {figures}")  # shown with -s
    assert figures["ids"] >= 2 and all("x4" in row["box"] for rows in ours for row in rows), figures


@pytest.mark.trained
def test_tracked_boxes_are_the_trackers_not_the_detections(gateway: Gateway, clips: dict[str, Path]) -> None:
    """The same video with and without track=true (same confidence): from the second frame on, tracked boxes are
    Kalman-smoothed, so some differ from the detections; the first frame's are the detections themselves (through
    the filter's box form and back: within float32 rounding)."""
    path = clips["bus"]
    tracked = _track(gateway, "v1", DETECT, path, False, confidence=0.25)
    r = requests.post(
        f"{gateway.url}/v1/predict/{DETECT}",
        headers={"x-api-key": gateway.key},
        files={"image": (path.name, path.read_bytes())},
        data={"confidence": "0.25"},
        timeout=600,
    )
    assert r.status_code == 200, r.text
    plain = [frame["data"] for frame in r.json()["data"]]
    assert all("track_id" not in row for rows in plain for row in rows)

    def boxes(rows: list[dict[str, Any]]) -> list[tuple[float, ...]]:
        return sorted(tuple(row["box"].values()) for row in rows)

    assert tracked[0] and len(tracked[0]) == len(plain[0])
    assert all(abs(a - b) < 1e-3 for p, q in zip(boxes(tracked[0]), boxes(plain[0])) for a, b in zip(p, q))
    moved = [
        max(abs(a - b) for a, b in zip(box, min(boxes(p), key=lambda q: sum(abs(x - y) for x, y in zip(q, box)))))
        for t, p in zip(tracked[1:], plain[1:])
        for box in boxes(t)
    ]
    assert max(moved) > 0.5, "every tracked box equals a detection: the tracker's boxes are not returned"


@pytest.mark.trained
def test_track_on_images_is_model_track_of_each_image(gateway: Gateway, trained: Path, images: dict[str, Path]) -> None:
    """Without `sequence`, each image is its own one-frame video: model.track(image) gives an id to every detection
    from 0.25 (new_track_thresh), the rest of the 0.1 cut is not returned. Several images: a tracker each."""
    files = [("image", (p.name, p.read_bytes())) for p in (images["bus"], images["zidane"])]
    r = requests.post(
        f"{gateway.url}/v1/predict/{DETECT}",
        headers={"x-api-key": gateway.key},
        files=files,
        data={"track": "true", "iou": "0.7"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    yolo = ultralytics_model(trained / DETECT / "source.onnx")
    for entry, name in zip(r.json()["data"], ("bus", "zidane")):
        want = yolo.track(str(images[name]), tracker="bytetrack.yaml", imgsz=640, iou=0.7, rect=True, verbose=False)[
            0
        ].summary()
        assert [row["track_id"] for row in entry["data"]] == list(range(1, len(want) + 1))
        compare_tracks([entry["data"]], [want], image_wh(images[name]))


def test_track_confidence_defaults_to_model_tracks_and_is_echoed(gateway: Gateway, images: dict[str, Path]) -> None:
    def metadata(**fields: str) -> dict[str, Any]:
        r = requests.post(
            f"{gateway.url}/api/models/yolov8n/predict",
            headers={"x-api-key": gateway.key},
            files={"file": images["bus"].read_bytes()},
            data={"details": "true", **fields},  # the arguments used: the gateway's own fields, asked for
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return dict(r.json()["metadata"])

    assert metadata()["conf"] == 0.25 and "tracker" not in metadata()
    tracking = metadata(track="true")
    assert tracking["conf"] == 0.1 and tracking["tracker"] == "bytetrack"
    assert metadata(track="1", conf="0.4")["conf"] == 0.4
    assert metadata(tracker="botsort.yaml")["tracker"] == "botsort"  # `tracker` alone tracks; Ultralytics' file name


def test_tracking_refusals_name_why(gateway: Gateway, images: dict[str, Path], tmp_path: Path) -> None:
    def post(model: str, data: dict[str, str], files: Any = None) -> requests.Response:
        files = files or {"image": images["bus"].read_bytes()}
        return requests.post(
            f"{gateway.url}/v1/predict/{model}", headers={"x-api-key": gateway.key}, files=files, data=data, timeout=60
        )

    r = post("yolov8n-cls", {"track": "true"})
    assert r.status_code == 422 and "classify" in r.json()["message"] and "detect, segment, pose and obb" in r.text
    r = post("yolov8n", {"tracker": "deepsort"})
    assert r.status_code == 400 and "'tracker'" in r.json()["message"] and "bytetrack or botsort" in r.text
    r = post("yolov8n", {"sequence": "cam 1"})
    assert r.status_code == 400 and "'sequence'" in r.json()["message"]
    r = post("yolov8n", {"sequence": "cam1", "track": "false"})
    assert r.status_code == 400 and "track=true" in r.json()["message"]
    two = [("image", images["bus"].read_bytes()), ("image", images["zidane"].read_bytes())]
    r = post("yolov8n", {"sequence": "cam1"}, two)
    assert r.status_code == 400 and "one image per request" in r.json()["message"]
    video = write_clip(tmp_path / "v.avi", "bus", 3)
    r = post("yolov8n", {"sequence": "cam1"}, {"image": (video.name, video.read_bytes())})
    assert r.status_code == 400 and "video is tracked within itself" in r.json()["message"]
