"""The newer Ultralytics API as Ultralytics documents it today: `source` (an image URL or base64 image data),
`decimals`, the Platform's metadata fields (`imageCount`, `functionTimeCall`, `version`), ours with `details=true`,
and its errors (`{"error": ...}`; a file that is not an image is a 400 there).

The documented shapes come from Ultralytics' own docs, docs/en/platform/deploy/inference.md ("Request Parameters" and
"Response") in the ultralytics/ultralytics repository at commit 02c6227 (the newest of the pages that describe this
route; deploy/endpoints.md at 010867a says dedicated endpoints answer "Same as shared inference").
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.parity import assert_matches
from tests.reference import image_wh, json_shape
from tests.conftest import Gateway

# The documented answer, copied from the page: only its shape (keys and value types) is the expectation here.
DOCUMENTED_RESPONSE: dict[str, Any] = {
    "images": [
        {
            "shape": [1080, 1920],
            "results": [
                {"class": 0, "name": "person", "confidence": 0.92, "box": {"x1": 100, "y1": 50, "x2": 300, "y2": 400}},
                {"class": 2, "name": "car", "confidence": 0.87, "box": {"x1": 400, "y1": 200, "x2": 600, "y2": 350}},
            ],
            "speed": {"preprocess": 1.2, "inference": 12.5, "postprocess": 2.3},
        }
    ],
    "metadata": {
        "imageCount": 1,
        "functionTimeCall": 0.018,
        "model": "model.pt",
        "version": {"ultralytics": "8.x.x", "torch": "2.6.0", "torchvision": "0.21.0", "python": "3.13.0"},
    },
}
# The documented parameters with their ranges (same page, "Request Parameters").
DOCUMENTED_DECIMALS = {"default": 5, "range": (0, 10)}


def _contains(ours: Any, documented: Any, where: str = "") -> None:
    """Every documented key is in ours with a value of the same shape (ours may have more keys)."""
    if isinstance(documented, dict):
        assert isinstance(ours, dict), f"{where}: {ours!r} is not an object"
        for key, value in documented.items():
            assert key in ours, f"{where}.{key} is missing"
            _contains(ours[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(ours, list) and ours, f"{where}: expected a non-empty list"
        _contains(ours[0], documented[0], f"{where}[0]")
    else:
        assert json_shape(ours) == json_shape(documented), f"{where}: {ours!r} vs documented {documented!r}"


def _post(gw: Gateway, model: str, **kwargs: Any) -> requests.Response:
    url = f"{gw.url}/api/models/{model}/predict"
    return requests.post(url, headers={"Authorization": f"Bearer {gw.key}"}, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def reference(repository: Path) -> Any:
    from ultralytics import YOLO

    models: dict[str, Any] = {}

    def predict(model: str, path: Path, decimals: int) -> list[dict[str, Any]]:
        if model not in models:
            models[model] = YOLO(str(repository / model / "source.onnx"))
        result = models[model].predict(str(path), imgsz=640, conf=0.25, iou=0.7, verbose=False)[0]
        return result.summary(decimals=decimals)

    return predict


def test_answer_has_the_documented_shape(gateway: Gateway, images: dict[str, Path]) -> None:
    with open(images["bus"], "rb") as f:
        r = _post(gateway, "yolov8n", files={"file": f}, data={"conf": 0.25, "iou": 0.7, "imgsz": 640})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["images"][0]["results"], "no detections: the shape check would compare nothing"
    _contains(body, DOCUMENTED_RESPONSE)
    meta = body["metadata"]
    assert meta["imageCount"] == 1 and 0 < meta["functionTimeCall"] < 120
    # what exported the model, as the exporter recorded it
    assert set(meta["version"]) == {"python", "torch", "torchvision", "ultralytics"} and all(meta["version"].values())
    assert "decimals" not in meta and "warning" not in body, "the contract closes its objects: ours only on request"
    with open(images["bus"], "rb") as f:
        detailed = _post(gateway, "yolov8n", files={"file": f}, data={"details": "true"}).json()["metadata"]
    assert detailed["decimals"] == DOCUMENTED_DECIMALS["default"]
    assert {"model", "task", "imgsz", "conf", "iou", "max_det", "classes", "agnostic", "normalize"} <= set(detailed)


def test_image_count_counts_every_image(gateway: Gateway, images: dict[str, Path]) -> None:
    files = [("file", images["bus"].read_bytes()), ("file", images["zidane"].read_bytes())]
    r = _post(gateway, "yolov8n", files=files)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["imageCount"] == 2 and len(r.json()["images"]) == 2


@pytest.mark.parametrize("model", ["yolov8n-seg", "yolov8n-pose"])
@pytest.mark.parametrize("decimals", [0, 2])
def test_decimals_round_every_number_as_ultralytics_summary_does(
    gateway: Gateway, images: dict[str, Path], reference: Any, model: str, decimals: int
) -> None:
    with open(images["bus"], "rb") as f:
        r = _post(gateway, model, files={"file": f}, data={"decimals": decimals})
    assert r.status_code == 200, r.text
    rows = r.json()["images"][0]["results"]
    want = reference(model, images["bus"], decimals)
    assert rows and len(rows) == len(want)
    numbers: list[float] = []
    for row in rows:
        numbers += [row["confidence"], *row["box"].values()]
        for part in ("segments", "keypoints"):
            for values in row.get(part, {}).values():
                numbers += values
    assert all(round(n, decimals) == n for n in numbers), "a number has more digits than asked for"
    if decimals >= 2:  # at 0 digits the tolerance of the parity check is finer than the rounding itself
        assert_matches(rows, want, image_wh(images["bus"]), normalize=False)
    else:
        assert [(a["class"], a["confidence"]) for a in rows] == [(b["class"], b["confidence"]) for b in want]


@pytest.mark.parametrize("value", ["-1", "11", "two"])
def test_decimals_out_of_the_documented_range_is_a_400(gateway: Gateway, images: dict[str, Path], value: str) -> None:
    with open(images["bus"], "rb") as f:
        r = _post(gateway, "yolov8n", files={"file": f}, data={"decimals": value})
    assert r.status_code == 400 and "'decimals'" in r.json()["error"] and "0 to 10" in r.json()["error"]


def test_base64_source_answers_as_the_same_file(gateway: Gateway, images: dict[str, Path]) -> None:
    data = images["zidane"].read_bytes()
    with open(images["zidane"], "rb") as f:
        want = _post(gateway, "yolov8n", files={"file": f}).json()["images"][0]["results"]
    assert want
    encoded = base64.b64encode(data).decode()
    for source in (encoded, f"data:image/jpeg;base64,{encoded}", base64.urlsafe_b64encode(data).decode()):
        r = _post(gateway, "yolov8n", data={"source": source})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["images"][0]["results"] == want
    # as the form field of the dedicated-endpoint style too
    r = requests.post(
        f"{gateway.url}/",
        headers={"x-api-key": gateway.key},
        data={"model": "yolov8n", "source": encoded, "iou": 0.7},  # its IoU default is the HUB's, 0.45
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["images"][0]["results"] == want


def test_source_errors_say_what_to_send(gateway: Gateway, images: dict[str, Path]) -> None:
    r = _post(gateway, "yolov8n", data={"source": "not base64 at all!"})
    assert r.status_code == 400 and "'source'" in r.json()["error"] and "base64" in r.json()["error"]
    r = _post(gateway, "yolov8n", data={"source": base64.b64encode(b"plain text, not an image").decode()})
    assert r.status_code == 400 and "image" in r.json()["error"], r.text  # a 415 elsewhere
    with open(images["bus"], "rb") as f:
        r = _post(gateway, "yolov8n", files={"file": f}, data={"source": "aGVsbG8="})
    assert r.status_code == 400 and "not several" in r.json()["error"]
    # a URL source goes through the same guard as `url`: no private or loopback address
    r = _post(gateway, "yolov8n", data={"source": "http://127.0.0.1:8080/photo.jpg"})
    assert r.status_code == 400 and "public" in r.json()["error"], r.text


def test_other_text_fields_keep_their_4_kib_limit(gateway: Gateway, images: dict[str, Path]) -> None:
    with open(images["bus"], "rb") as f:
        r = _post(gateway, "yolov8n", files={"file": f}, data={"classes": "0," * 3000})
    assert r.status_code == 400 and "4 KiB" in r.json()["error"], r.text
