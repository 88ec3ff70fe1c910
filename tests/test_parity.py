"""The gateway's `data` equals Ultralytics' own `YOLO(source.onnx).predict(...)[0].summary()` on the same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.conftest import MODELS, Gateway
from bench.parity import assert_matches

# Photos at the default confidence; generated edge cases at a lower one so the untrained fixtures still detect.
IMAGES = {"bus": 0.25, "zidane": 0.25, "portrait": 0.25, "wide": 0.1, "tiny": 0.1, "gray": 0.1, "alpha": 0.1}
SIZES = (320, 640, 500)  # 500 is not a multiple of 32: both sides round it up to 512


@pytest.fixture(scope="session")
def reference(repository: Path) -> Any:
    from ultralytics import YOLO

    models = {m: YOLO(str(repository / m / "source.onnx")) for m in MODELS}
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def predict(model: str, path: Path, size: int, conf: float, iou: float, rect: bool, normalize: bool) -> list[dict[str, Any]]:
        key = (model, str(path), size, conf, iou, rect, normalize)
        if key not in cache:
            result = models[model].predict(str(path), imgsz=size, conf=conf, iou=iou, rect=rect, verbose=False)[0]
            cache[key] = result.summary(normalize=normalize)
        return cache[key]

    return predict


def _wh(path: Path) -> tuple[int, int]:
    h, w = cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2]
    return w, h


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["rect", "square"])
def test_parity_with_ultralytics(
    request: pytest.FixtureRequest, reference: Any, images: dict[str, Path], model: str, image: str, size: int, mode: str
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
    assert_matches(body["data"], want, _wh(path), normalize=False)


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
    assert_matches(data, want, _wh(path), normalize=True)
    assert all(0 <= d["box"][k] <= 1 for d in data for k in ("x1", "y1", "x2", "y2"))
