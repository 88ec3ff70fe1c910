"""The gateway's `data` equals Ultralytics' own `YOLO(source.onnx).predict(...)[0].summary()` on the same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reference import image_wh
from tests.conftest import ALL_MODELS, CLASSIFY, MODELS, YOLO11, Gateway
from bench.parity import assert_matches

# Photos at the default confidence; generated edge cases at a lower one so the untrained fixtures still detect.
IMAGES = {"bus": 0.25, "zidane": 0.25, "portrait": 0.25, "wide": 0.1, "tiny": 0.1, "gray": 0.1, "alpha": 0.1}
SIZES = (320, 640, 500)  # 500 is not a multiple of 32: both sides round it up to 512


@pytest.fixture(scope="session")
def reference(repository: Path) -> Any:
    from ultralytics import YOLO

    models = {m: YOLO(str(repository / m / "source.onnx")) for m in ALL_MODELS}
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def predict(
        model: str, path: Path, size: int, conf: float, iou: float, rect: bool, normalize: bool
    ) -> list[dict[str, Any]]:
        key = (model, str(path), size, conf, iou, rect, normalize)
        if key not in cache:
            result = models[model].predict(str(path), imgsz=size, conf=conf, iou=iou, rect=rect, verbose=False)[0]
            cache[key] = result.summary(normalize=normalize)
        return cache[key]

    return predict


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["rect", "square"])
def test_parity_with_ultralytics(
    request: pytest.FixtureRequest,
    reference: Any,
    images: dict[str, Path],
    model: str,
    image: str,
    size: int,
    mode: str,
) -> None:
    gw: Gateway = request.getfixturevalue("gateway" if mode == "rect" else "gateway_square")
    conf, iou = IMAGES[image], 0.45
    path = images[image]
    with open(path, "rb") as f:
        r = gw.predict(model, files={"image": f}, data={"size": size, "confidence": conf, "iou": iou})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    want = reference(model, path, size, conf, iou, mode == "rect", False)
    assert_matches(body["data"], want, image_wh(path), normalize=False)


@pytest.mark.parametrize("image", ["bus", "zidane", "alpha"])
@pytest.mark.parametrize("model", MODELS)
def test_parity_normalized(gateway: Gateway, reference: Any, images: dict[str, Path], model: str, image: str) -> None:
    conf = IMAGES[image]
    path = images[image]
    with open(path, "rb") as f:
        r = gateway.predict(model, files={"image": f}, data={"confidence": conf, "normalize": "true"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    want = reference(model, path, 640, conf, 0.45, True, True)
    assert_matches(data, want, image_wh(path), normalize=True)
    assert all(0 <= d["box"][k] <= 1 for d in data for k in ("x1", "y1", "x2", "y2"))


@pytest.mark.parametrize(
    "fields,kwargs",
    [
        ({"max_det": "7"}, {"max_det": 7}),
        ({"classes": "{two}"}, {"classes": "{two}"}),
        ({"agnostic": "true"}, {"agnostic_nms": True}),
        (
            {"classes": "{three}", "agnostic": "1", "max_det": "20"},
            {"classes": "{three}", "agnostic_nms": True, "max_det": 20},
        ),
    ],
)
@pytest.mark.parametrize("model", ["yolov8n", "yolov8n-seg", "yolov8n-obb"])
def test_nms_controls_match_ultralytics(
    gateway: Gateway,
    repository: Path,
    images: dict[str, Path],
    model: str,
    fields: dict[str, str],
    kwargs: dict[str, Any],
) -> None:
    from ultralytics import YOLO

    path = images["bus"]
    yolo = YOLO(str(repository / model / "source.onnx"))
    present = [d["class"] for d in yolo.predict(str(path), conf=0.1, verbose=False)[0].summary()]
    by_count = sorted(set(present), key=lambda c: (-present.count(c), c))
    chosen = {"{two}": by_count[:2], "{three}": by_count[1:4]}  # classes the untrained fixture really predicts here
    fields = {k: ",".join(map(str, chosen[v])) if v in chosen else v for k, v in fields.items()}
    kwargs = {k: chosen[v] if isinstance(v, str) and v in chosen else v for k, v in kwargs.items()}
    r = gateway.predict(model, files={"image": path.read_bytes()}, data={"confidence": "0.1", **fields})
    assert r.status_code == 200, r.text
    want = yolo.predict(str(path), conf=0.1, iou=0.45, verbose=False, **kwargs)[0].summary()
    if "classes" in kwargs:
        assert {d["class"] for d in want} <= set(kwargs["classes"]) and len(want) < len(present)
    assert_matches(r.json()["data"], want, image_wh(path), normalize=False)


@pytest.mark.parametrize("size", (320, 640))
@pytest.mark.parametrize("image", ["bus", "zidane", "wide"])
@pytest.mark.parametrize("model", YOLO11)
@pytest.mark.parametrize("mode", ["rect", "square"])
def test_yolo11_parity_with_ultralytics(
    request: pytest.FixtureRequest,
    reference: Any,
    images: dict[str, Path],
    model: str,
    image: str,
    size: int,
    mode: str,
) -> None:
    """YOLO11 goes through the same export and post-processing: nothing in the path assumes YOLOv8."""
    gw: Gateway = request.getfixturevalue("gateway" if mode == "rect" else "gateway_square")
    conf, path = IMAGES[image], images[image]
    r = gw.predict(model, files={"image": path.read_bytes()}, data={"size": size, "confidence": conf})
    assert r.status_code == 200, r.text
    want = reference(model, path, size, conf, 0.45, mode == "rect", False)
    assert_matches(r.json()["data"], want, image_wh(path), normalize=False)


def _predict(gw: Gateway, model: str, path: Path, **fields: Any) -> list[dict[str, Any]]:
    r = gw.predict(model, files={"image": path.read_bytes()}, data=fields)
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


OBB_CASES = {
    "yolov8n-obb": (("bus", "zidane", "portrait", "wide", "gray"), SIZES),
    "yolo11n-obb": (("bus", "zidane", "wide"), (320, 640)),  # same path, newer architecture
}


@pytest.mark.parametrize("mode", ["rect", "square"])
@pytest.mark.parametrize(
    "model,image,size", [(m, i, s) for m, (imgs, sizes) in OBB_CASES.items() for i in imgs for s in sizes]
)
def test_obb_parity_with_ultralytics(
    request: pytest.FixtureRequest,
    reference: Any,
    images: dict[str, Path],
    model: str,
    image: str,
    size: int,
    mode: str,
) -> None:
    """Oriented boxes: rotated NMS, xywhr rescaling and the four corners, as Results.summary() gives them."""
    gw: Gateway = request.getfixturevalue("gateway" if mode == "rect" else "gateway_square")
    conf, path = IMAGES[image], images[image]
    data = _predict(gw, model, path, size=size, confidence=conf)
    want = reference(model, path, size, conf, 0.45, mode == "rect", False)
    assert all(set(d["box"]) == {f"{a}{i}" for i in range(1, 5) for a in "xy"} for d in data)
    assert_matches(data, want, image_wh(path), normalize=False)


@pytest.mark.parametrize("image", ["bus", "zidane"])
def test_obb_parity_normalized(gateway: Gateway, reference: Any, images: dict[str, Path], image: str) -> None:
    path = images[image]
    data = _predict(gateway, "yolov8n-obb", path, normalize="true")
    assert_matches(data, reference("yolov8n-obb", path, 640, 0.25, 0.45, True, True), image_wh(path), normalize=True)


@pytest.mark.parametrize("size", (224, 160, 500))
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("model", CLASSIFY)
def test_classify_parity_with_ultralytics(
    gateway: Gateway,
    gateway_square: Gateway,
    reference: Any,
    images: dict[str, Path],
    model: str,
    image: str,
    size: int,
) -> None:
    """Top five classes after Ultralytics' resize-and-centre-crop; the letterbox mode doesn't apply to classifiers."""
    path = images[image]
    want = reference(model, path, size, 0.25, 0.45, True, False)
    assert len(want) == 5 and all(set(d) == {"name", "class", "confidence"} for d in want)
    for gw in (gateway, gateway_square):
        assert_matches(_predict(gw, model, path, size=size), want, image_wh(path), normalize=False)


def test_classify_ignores_detection_arguments(gateway: Gateway, images: dict[str, Path]) -> None:
    """confidence, iou, max_det, classes, agnostic and normalize don't apply to classifiers (nor in Ultralytics)."""
    path = images["bus"]
    plain = _predict(gateway, "yolov8n-cls", path)
    ignored = {"confidence": 0.99, "iou": 0.1, "max_det": 1, "classes": "3", "agnostic": 1, "normalize": 1}
    loaded = _predict(gateway, "yolov8n-cls", path, **ignored)
    assert plain == loaded and len(plain) == 5
