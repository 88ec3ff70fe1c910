"""Every dialect of Ultralytics' inference APIs against the real gateway, tried as a new user would, with only the
host and the key changed: the official clients where there is one (hub-sdk's `HUBClient(...).model(id).predict`, run
as a subprocess with ULTRALYTICS_HUB_API; the `ultralytics-platform` SDK with `base_url`, and its `ul cloud predict`
CLI with ULTRALYTICS_PLATFORM_URL), the documented requests where there is none (recorded in tests/data/dialects/).

For each dialect: every task, the defaults when the arguments are omitted, the errors (401, 404, 413, 422 or 400, 429)
in its shape, and geometry that agrees with the v1 answer for the same image within 1e-3 of the image's size.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from gateway.keys.auth import KeyDraft, create_key
from tests.conftest import ROOT, Gateway, start_gateway, stop_gateway
from tests.reference import json_shape
from tritonlocal import launcher

DATA = Path(__file__).parent / "data" / "dialects"
TASKS = {"detect": "yolov8n", "segment": "yolov8n-seg", "pose": "yolov8n-pose", "obb": "yolov8n-obb",
         "classify": "yolov8n-cls"}  # fmt: skip
UPLOAD_LIMIT = 1024 * 1024  # this module's gateway: a small image limit, so a 413 needs no large upload
IOU = {"hub": 0.45, "hub-xywhn": 0.45, "hub-images": 0.45, "predict": 0.45, "platform": 0.7}  # the documented defaults
PLATFORM_METADATA = {"imageCount", "functionTimeAlive", "functionTimeCall", "task", "version", "model", "classNames"}
PREDICT_METADATA = {"functionTimeAlive", "functionTimeCall", "imageCount", "model", "version"}
BUILT_WITH = {"python", "torch", "torchvision", "ultralytics"}
CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64  # a JPEG's header and nothing that decodes

# hub-sdk, as its README uses it: log in with the key, take the model, predict a local file. ULTRALYTICS_HUB_API (read
# when hub_sdk is imported) is the host; what it logs goes to stderr.
HUB_SDK = """
import json, sys
from hub_sdk import HUBClient

args = json.loads(sys.argv[1])
client = HUBClient({"api_key": args["key"]})
out = {"authenticated": client.authenticated, "models": {}}
for model_id in args["models"]:
    model = client.model(model_id)
    response = model.predict(args["image"], args.get("config", {}))
    out["models"][model_id] = {
        "data": model.data,
        "status": None if response is None else response.status_code,
        "body": None if response is None else response.json(),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(triton, tmp_path_factory.mktemp("gateway-dialects"), max_upload_bytes=str(UPLOAD_LIMIT))
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def bus(images: dict[str, Path]) -> Path:
    return images["bus"]


def _key(gw: Gateway, name: str, **options: Any) -> str:
    return create_key(gw.keys_file, KeyDraft(name, **options))[1]


def _hub_sdk(base: str, key: str, models: list[str], image: Path, config: dict[str, Any] | None = None) -> Any:
    """hub-sdk's answers: (its JSON summary, what it logged)."""
    env = {**os.environ, "ULTRALYTICS_HUB_API": base, "ULTRALYTICS_HUB_EXCEPTIONS": "false"}
    args = json.dumps({"key": key, "models": models, "image": str(image), "config": config or {}})
    run = subprocess.run(
        [sys.executable, "-c", HUB_SDK, args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def _platform(gw: Gateway, key: str, base: str = "") -> Any:
    from ultralytics_platform import Platform

    return Platform(api_key=key, base_url=base or gw.url, max_retries=0)


def _v1(gw: Gateway, model: str, image: Path, iou: float, **data: Any) -> dict[str, Any]:
    """The v1 answer (the first docs' dialect) for the image at size 640 with this IoU: the geometry every dialect
    must match."""
    r = gw.predict(model, files={"image": image.read_bytes()}, data={"iou": iou, "size": 640, **data})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    assert rows, f"{model}: no rows to compare"
    return {"rows": rows}


def _shape(image: Path) -> tuple[int, int]:
    import cv2

    h, w = cv2.imread(str(image)).shape[:2]
    return h, w


def _pairs(values: list[float], step: int) -> np.ndarray:
    return np.array(values, dtype=float).reshape(-1, step)[:, :2]


def _geometry(row: dict[str, Any], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """A row's points in image pixels, by part (box, outline, keypoints), whatever its dialect wrote."""
    h, w = hw
    scale = np.array([w, h], dtype=float)
    if "xcenter" in row:  # hub-xywhn: centre and size, normalized
        c, s = np.array([row["xcenter"], row["ycenter"]]), np.array([row["width"], row["height"]])
        return {"box": np.stack([c - s / 2, c + s / 2]) * scale}
    if "segment" in row:
        return {"outline": _pairs(row["segment"], 2) * scale}
    if "keypoints" in row and isinstance(row["keypoints"], list):
        return {"keypoints": _pairs(row["keypoints"], 3) * scale}
    if "obb" in row:
        return {"box": _pairs(row["obb"], 2) * scale}
    out: dict[str, np.ndarray] = {}
    if "box" in row:
        out["box"] = np.array([[row["box"][f"{a}{i}"] for a in "xy"] for i in range(1, 5) if f"x{i}" in row["box"]])
    if "segments" in row:
        out["outline"] = np.stack([row["segments"]["x"], row["segments"]["y"]], axis=1)
    if "keypoints" in row:
        out["keypoints"] = np.stack([row["keypoints"]["x"], row["keypoints"]["y"]], axis=1)
    return out


def _agrees(rows: list[dict[str, Any]], v1: list[dict[str, Any]], hw: tuple[int, int]) -> None:
    """The dialect's rows are the v1 rows: same classes and confidences in order, every point within 1e-3 of the
    image's width and height (the parts the dialect writes)."""
    assert rows and len(rows) == len(v1), (len(rows), len(v1))
    tolerance = np.array([hw[1], hw[0]], dtype=float) * 1e-3
    for ours, theirs in zip(rows, v1):
        assert ours["class"] == theirs["class"] and abs(ours["confidence"] - theirs["confidence"]) <= 1e-5
        want = _geometry(theirs, hw)
        got = _geometry(ours, hw)
        assert got.keys() <= want.keys() and (got or "box" not in want), (ours, theirs)
        for part, points in got.items():
            assert points.shape == want[part].shape, part
            assert np.all(np.abs(points - want[part]) <= tolerance), (part, np.abs(points - want[part]).max())


def _same_keys(ours: Any, documented: Any, where: str = "") -> None:
    """Our answer has exactly the documented keys at every level, with values of the same JSON type."""
    if isinstance(documented, dict):
        assert isinstance(ours, dict) and set(ours) == set(documented), (where, sorted(ours), sorted(documented))
        for key, value in documented.items():
            _same_keys(ours[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(ours, list) and ours, f"{where}: expected a non-empty list"
        for item in ours:
            _same_keys(item, documented[0], f"{where}[]")
    else:
        assert json_shape(ours) == json_shape(documented), (where, ours, documented)


# --- hub: HUB v1 as first documented, through hub-sdk ----------------------------------------------------------------


def test_hub_sdk_logs_in_and_predicts_every_task_with_its_key(gw: Gateway, bus: Path) -> None:
    """hub-sdk logs in with POST /v1/auth first (a 404 there made it drop the key and predict with none), reads the
    model with GET /v1/models/{id} (`data`), then predicts: every task answers as the v1 route does."""
    found, log = _hub_sdk(gw.url, gw.key, list(TASKS.values()), bus, {"size": 640, "confidence": 0.25, "iou": 0.45})
    assert found["authenticated"], log
    hw = _shape(bus)
    for task, model in TASKS.items():
        answer = found["models"][model]
        assert answer["data"]["id"] == model and answer["data"]["task"] == task
        assert answer["status"] == 200 and answer["body"]["success"] is True, (model, answer)
        _agrees(answer["body"]["data"], _v1(gw, model, bus, 0.45)["rows"], hw)


def test_hub_sdk_without_a_valid_key_is_told_so(gw: Gateway, bus: Path) -> None:
    found, log = _hub_sdk(gw.url, "yk_00000000_nope", ["yolov8n"], bus)
    assert not found["authenticated"] and "Invalid API key" in log
    assert found["models"]["yolov8n"]["status"] is None and "Unauthorized" in log
    r = requests.post(f"{gw.url}/v1/auth", headers={"x-api-key": "yk_00000000_nope"}, timeout=10)
    assert r.status_code == 401 and r.json()["success"] is False and r.headers["www-authenticate"].startswith("ApiKey")


def test_v1_auth_says_which_key_it_is(gw: Gateway) -> None:
    key = _key(gw, "auth-check", models=["yolov8n"], dialect="hub-xywhn")
    r = requests.post(f"{gw.url}/v1/auth", headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    assert r.json()["data"] | {"id": ""} == {"id": "", "name": "auth-check", "models": ["yolov8n"], "rate": None,
                                           "dialect": "hub-xywhn"}  # fmt: skip


def test_hub_sdk_reads_the_rate_limit_reset_as_a_unix_time(gw: Gateway, bus: Path) -> None:
    """hub-sdk turns X-RateLimit-Reset into a date with `fromtimestamp(int(...))`: seconds-until gave 1970."""
    key = _key(gw, "hub-limited", rate=0.001)  # a bucket of one image, full again in 1000 s
    assert gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": bus.read_bytes()}).status_code == 200
    before = time.time()
    found, log = _hub_sdk(gw.url, key, ["yolov8n"], bus)
    assert found["authenticated"] and found["models"]["yolov8n"]["status"] is None, found
    said = re.search(r"make requests again after (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log)
    assert said, log
    when = datetime.datetime.strptime(said.group(1), "%Y-%m-%d %H:%M:%S").timestamp()  # hub-sdk writes local time
    assert before + 900 <= when <= time.time() + 1100, (said.group(1), log)
    r = gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": bus.read_bytes()})
    assert r.status_code == 429 and r.json()["success"] is False and int(r.headers["retry-after"]) >= 900
    assert before + 900 <= int(r.headers["x-ratelimit-reset"]) <= time.time() + 1100


@pytest.mark.parametrize("dialect", ["hub", "hub-xywhn"])
def test_hub_errors_are_the_v1_envelope(gw: Gateway, bus: Path, dialect: str) -> None:
    key = _key(gw, f"errors-{dialect}", dialect=dialect)
    cases = {
        401: gw.predict("yolov8n", headers={"x-api-key": "yk_00000000_nope"}, files={"image": bus.read_bytes()}),
        404: gw.predict("nope", headers={"x-api-key": key}, files={"image": bus.read_bytes()}),
        413: gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": b"\xff" * (UPLOAD_LIMIT + 1)}),
        422: gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": CORRUPT_JPEG}),
        415: gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": b"plain text"}),
    }
    for status, r in cases.items():
        assert r.status_code == status, (status, r.text)
        body = r.json()
        assert set(body) == {"success", "message", "data"} and body["success"] is False and body["message"], body


# --- hub-xywhn: the later HUB docs, bound to a key or a base path -----------------------------------------------------


def test_hub_sdk_with_a_hub_xywhn_key_gets_the_later_rows_for_every_task(gw: Gateway, bus: Path) -> None:
    key = _key(gw, "xywhn", dialect="hub-xywhn")
    found, log = _hub_sdk(gw.url, key, list(TASKS.values()), bus, {"size": 640, "confidence": 0.25, "iou": 0.45})
    assert found["authenticated"], log
    documented = json.loads((DATA / "hub-xywhn.json").read_text())["responses"]
    hw = _shape(bus)
    for task, model in TASKS.items():
        body = found["models"][model]["body"]
        _same_keys(body, documented[task], task)
        _agrees(body["data"], _v1(gw, model, bus, 0.45)["rows"], hw)
        numbers = [v for row in body["data"] for v in row.values() if isinstance(v, float)]
        assert any(len(repr(v)) > 9 for v in numbers), "full floats, not rounded to 5 decimals"


def test_a_base_path_pins_hub_xywhn_for_any_key(gw: Gateway, bus: Path) -> None:
    found, log = _hub_sdk(f"{gw.url}/dialects/hub-xywhn", gw.key, ["yolov8n"], bus)
    assert found["authenticated"], log
    rows = found["models"]["yolov8n"]["body"]["data"]
    assert rows and set(rows[0]) == {"class", "name", "confidence", "width", "height", "xcenter", "ycenter"}
    assert all(0 <= row["xcenter"] <= 1 and 0 <= row["ycenter"] <= 1 for row in rows)
    # and a base path pins a dialect only where it speaks: not the Platform's routes
    r = requests.post(f"{gw.url}/dialects/hub-xywhn/api/models/a/b/yolov8n/predict", timeout=10)
    assert r.status_code == 404 and "hub-xywhn has no such route" in r.json()["message"]
    r = requests.post(f"{gw.url}/dialects/klingon/v1/predict/yolov8n", timeout=10)
    assert r.status_code == 404 and "'klingon' is not a dialect" in r.json()["message"]


@pytest.mark.parametrize("dialect", ["hub", "hub-xywhn"])
def test_hub_defaults_when_the_arguments_are_omitted(gw: Gateway, bus: Path, dialect: str) -> None:
    key = _key(gw, f"defaults-{dialect}", dialect=dialect)
    data = bus.read_bytes()

    def rows(**fields: Any) -> Any:
        r = gw.predict("yolov8n", headers={"x-api-key": key}, files={"image": data}, data=fields)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    omitted = rows()
    assert omitted == rows(size=640, confidence=0.25, iou=0.45)
    assert omitted != rows(iou=0.7) and omitted != rows(confidence=0.3), "the defaults would not be seen"


# --- hub-images: the HUB v1 URL with the newer body ------------------------------------------------------------------


def _file_post(gw: Gateway, path: str, image: Path, key: str = "", **data: Any) -> requests.Response:
    """POST `path` with the image as a `file` part and `data` as fields, the key in `x-api-key`."""
    files = {"file": (image.name, image.read_bytes())}
    headers = {"x-api-key": key or gw.key}
    return requests.post(f"{gw.url}{path}", headers=headers, files=files, data=data, timeout=120)


def _newer_body(gw: Gateway, model: str, image: Path, key: str = "", **data: Any) -> requests.Response:
    return _file_post(gw, f"/v1/predict/{model}", image, key, **data)


@pytest.mark.parametrize("task", TASKS)
def test_hub_images_answers_every_task_in_the_images_format(gw: Gateway, bus: Path, task: str) -> None:
    model = TASKS[task]
    r = _newer_body(gw, model, bus, imgsz=640, conf=0.25, iou=0.45)
    assert r.status_code == 200, r.text
    body = r.json()
    recorded = json.loads((DATA / "hub-images.json").read_text())["responses"]["detect"]
    _same_keys({k: v for k, v in body.items() if k != "images"}, {"metadata": recorded["metadata"]})
    assert body["metadata"]["model"] == model and set(body["metadata"]["version"]) == BUILT_WITH
    assert body["images"][0]["shape"] == list(_shape(bus)) and set(body["images"][0]) == {"results", "shape", "speed"}
    _agrees(body["images"][0]["results"], _v1(gw, model, bus, 0.45)["rows"], _shape(bus))


def test_hub_images_defaults_and_errors(gw: Gateway, bus: Path) -> None:
    omitted = _newer_body(gw, "yolov8n", bus, details="true").json()
    assert omitted["metadata"] | {"imgsz": 640, "conf": 0.25, "iou": 0.45} == omitted["metadata"]
    explicit = _newer_body(gw, "yolov8n", bus, imgsz=640, conf=0.25, iou=0.45).json()
    assert omitted["images"][0]["results"] == explicit["images"][0]["results"]
    for status, r in {
        401: _newer_body(gw, "yolov8n", bus, key="yk_00000000_nope", imgsz=640),
        404: _newer_body(gw, "nope", bus, imgsz=640),
        422: requests.post(
            f"{gw.url}/v1/predict/yolov8n", headers={"x-api-key": gw.key}, files={"file": CORRUPT_JPEG}, timeout=60
        ),
    }.items():
        assert r.status_code == status and r.json()["success"] is False and r.json()["data"] == {}, r.text


# --- predict: predict.ultralytics.com, shared and dedicated ----------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_predict_answers_every_task_as_recorded(gw: Gateway, bus: Path, task: str) -> None:
    recorded = json.loads((DATA / "predict.json").read_text())
    request, documented = recorded["request"], recorded["responses"][task]
    model = TASKS[task]
    sent = {**request["data"], "model": request["data"]["model"].replace("MODEL_ID", model)}
    r = _file_post(gw, request["path"], bus, **sent)
    assert r.status_code == 200, r.text
    body = r.json()
    _same_keys(body, documented, task)
    assert body["metadata"]["model"] == sent["model"], "metadata.model echoes the model URL sent"
    assert set(body["metadata"]["version"]) == BUILT_WITH and "unknown" not in body["metadata"]["version"].values()
    assert 0 < body["metadata"]["functionTimeCall"] < 60 and body["metadata"]["functionTimeAlive"] > 0
    _agrees(body["images"][0]["results"], _v1(gw, model, bus, 0.45)["rows"], _shape(bus))
    rounded = [v for row in body["images"][0]["results"] for v in row.get("box", {}).values()]
    assert all(round(v, 5) == v for v in rounded), "pixels rounded to 5 decimals"


def test_predict_defaults_are_the_hubs(gw: Gateway, bus: Path) -> None:
    url = "https://hub.ultralytics.com/models/yolov8n"
    omitted = _file_post(gw, "/", bus, model=url, details="1").json()
    assert omitted["metadata"] | {"imgsz": 640, "conf": 0.25, "iou": 0.45} == omitted["metadata"]
    explicit = _file_post(gw, "/", bus, model=url, imgsz=640, conf=0.25, iou=0.45).json()
    other = _file_post(gw, "/", bus, model=url, iou=0.7).json()
    assert omitted["images"][0]["results"] == explicit["images"][0]["results"] != other["images"][0]["results"]


def test_predict_dedicated_endpoints_are_bound_to_one_model(gw: Gateway, bus: Path) -> None:
    """A dedicated endpoint has no `model` field: its base URL names the model, or the key does."""
    want = _file_post(gw, "/", bus, model="https://hub.ultralytics.com/models/yolov8n-pose").json()
    by_url = _file_post(gw, "/dedicated/yolov8n-pose", bus, imgsz=640, conf=0.25, iou=0.45)
    by_key = _file_post(gw, "/", bus, key=_key(gw, "one-model", models=["yolov8n-pose"]), imgsz=640)
    for r in (by_url, by_key):
        assert r.status_code == 200, r.text
        assert r.json()["images"][0]["results"] == want["images"][0]["results"]
        assert r.json()["metadata"]["model"] == "yolov8n-pose"
    r = _file_post(gw, "/", bus, imgsz=640)  # a key for every model, and no `model`
    assert r.status_code == 400 and "'model'" in r.json()["message"] and "hub.ultralytics.com" in r.json()["message"]


def test_predict_errors_and_rate_limits(gw: Gateway, bus: Path) -> None:
    url = "https://hub.ultralytics.com/models/yolov8n"
    limited = _key(gw, "predict-limited", rate=0.001)
    assert _file_post(gw, "/", bus, key=limited, model=url).status_code == 200
    before = time.time()
    cases = {
        401: _file_post(gw, "/", bus, key="yk_00000000_nope", model=url),
        404: _file_post(gw, "/", bus, model="https://hub.ultralytics.com/models/tMb1oh6heAMVVr8YZAeH"),
        413: requests.post(f"{gw.url}/", headers={"x-api-key": gw.key}, data={"model": url},
                           files={"file": b"\xff" * (UPLOAD_LIMIT + 1)}, timeout=60),
        422: requests.post(f"{gw.url}/", headers={"x-api-key": gw.key}, data={"model": url},
                           files={"file": CORRUPT_JPEG}, timeout=60),
        429: _file_post(gw, "/", bus, key=limited, model=url),
    }  # fmt: skip
    for status, r in cases.items():
        assert r.status_code == status and set(r.json()) == {"success", "message", "data"}, (status, r.text)
    assert before + 900 <= int(cases[429].headers["x-ratelimit-reset"]) <= time.time() + 1100


# --- platform: the Ultralytics Platform, through its SDK and its CLI ------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_platform_sdk_predicts_every_task_as_its_contract_says(gw: Gateway, bus: Path, task: str) -> None:
    model = TASKS[task]
    with _platform(gw, gw.key) as client, open(bus, "rb") as f:
        answer = client.models.predict("someone", "project", model, body={"file": f})
    meta = answer["metadata"]
    assert set(answer) == {"images", "metadata"}, "no gateway field unless asked (the contract closes objects)"
    assert set(meta) == PLATFORM_METADATA and meta["task"] == task and meta["model"] == model
    assert set(meta["version"]) == BUILT_WITH and meta["imageCount"] == 1 and meta["classNames"]
    assert set(answer["images"][0]) == {"results", "shape", "speed"}
    rows = answer["images"][0]["results"]
    for row in rows:
        if "box" in row:  # the CLI rebuilds boxes from the values in order
            assert list(row["box"]) == [f"{a}{i}" for i in range(1, len(row["box"]) // 2 + 1) for a in "xy"]
    _agrees(rows, _v1(gw, model, bus, 0.7)["rows"], _shape(bus))


def test_platform_defaults_and_details(gw: Gateway, bus: Path) -> None:
    with _platform(gw, gw.key) as client, open(bus, "rb") as f:
        detailed = client.models.predict("me", "p", "yolov8n", body={"file": f, "details": True})
    defaults = {"imgsz": 640, "conf": 0.25, "iou": 0.7, "normalize": False, "decimals": 5}
    assert detailed["metadata"] | defaults == detailed["metadata"] and detailed["warning"], "untrained: said on request"
    with _platform(gw, gw.key) as client, open(bus, "rb") as f:
        omitted = client.models.predict("me", "p", "yolov8n", body={"file": f})
    assert omitted["images"][0]["results"] == detailed["images"][0]["results"]
    assert omitted["images"][0]["results"] == _v1(gw, "yolov8n", bus, 0.7)["rows"]


def test_platform_errors_are_its_own(gw: Gateway, bus: Path) -> None:
    from ultralytics_platform import APIError

    def refused(key: str, model: str, content: bytes) -> APIError:
        with _platform(gw, key) as client, pytest.raises(APIError) as caught:
            client.models.predict("me", "p", model, body={"file": ("image.jpg", content)})
        return caught.value

    limited = _key(gw, "platform-limited", rate=0.001)
    with _platform(gw, limited) as client, open(bus, "rb") as f:
        client.models.predict("me", "p", "yolov8n", body={"file": f})
    before = time.time()
    cases = {
        401: refused("yk_00000000_nope", "yolov8n", bus.read_bytes()),
        404: refused(gw.key, "nope", bus.read_bytes()),
        413: refused(gw.key, "yolov8n", b"\xff" * (UPLOAD_LIMIT + 1)),
        400: refused(gw.key, "yolov8n", CORRUPT_JPEG),
    }
    for status, error in cases.items():
        assert error.status_code == status and set(error.json) == {"error"} and error.json["error"], error.body
    assert refused(gw.key, "yolov8n", b"plain text, not an image").status_code == 400  # not 415 there
    error = refused(limited, "yolov8n", bus.read_bytes())
    assert error.status_code == 429 and set(error.json) == {"error", "retryAfter", "resetAt"}, error.body
    r = requests.post(
        f"{gw.url}/api/models/me/p/yolov8n/predict",
        headers={"Authorization": f"Bearer {limited}"},
        files={"file": bus.read_bytes()},
        timeout=60,
    )
    reset = datetime.datetime.fromisoformat(r.headers["x-ratelimit-reset"].replace("Z", "+00:00")).timestamp()
    assert r.status_code == 429 and r.headers["x-ratelimit-reset"].endswith(".000Z"), r.headers
    assert before + 900 <= reset <= time.time() + 1100 and int(r.headers["retry-after"]) == r.json()["retryAfter"]
    reset_at = datetime.datetime.fromisoformat(r.json()["resetAt"].replace("Z", "+00:00")).timestamp()
    assert abs(reset_at - reset) <= 1, (r.json(), r.headers)
    # the router's own answers on its paths too, and the key's header is named as the Platform names it
    wrong = requests.get(f"{gw.url}/api/models/me/p/yolov8n/predict", timeout=10)
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}
    assert cases[401].status_code == 401 and "Authorization: Bearer" in cases[401].json["error"]


def test_platform_keys_take_the_format_ultralytics_tools_accept(gw: Gateway, bus: Path) -> None:
    """Ultralytics' settings drop a saved key that is not `ul_` and 40 hex digits: Platform keys are minted so."""
    key = _key(gw, "platform-key", dialect="platform")
    assert re.fullmatch(r"ul_[0-9a-f]{40}", key), key
    with _platform(gw, key) as client, open(bus, "rb") as f:
        assert client.models.predict("me", "p", "yolov8n", body={"file": f})["images"][0]["results"]


def test_platform_dedicated_forms_and_deployments(gw: Gateway, bus: Path) -> None:
    want = _v1(gw, "yolov8n-obb", bus, 0.7)["rows"]
    one = _key(gw, "one-obb", models=["yolov8n-obb"])
    with _platform(gw, gw.key) as client, open(bus, "rb") as f:
        deployed = client.deployments.predict("me", "yolov8n-obb", body={"file": f})
    answers = [deployed]
    for path, key in (("/dedicated/yolov8n-obb/predict", gw.key), ("/predict", one)):
        r = requests.post(
            f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"}, files={"file": bus.read_bytes()}, timeout=60
        )
        assert r.status_code == 200, r.text
        answers.append(r.json())
    for answer in answers:
        assert answer["images"][0]["results"] == want and answer["metadata"]["task"] == "obb"
    r = requests.post(
        f"{gw.url}/predict", headers={"Authorization": f"Bearer {gw.key}"}, files={"file": bus.read_bytes()}, timeout=60
    )
    assert r.status_code == 400 and "one model" in r.json()["error"]


def test_platform_base_path_serves_the_sdk(gw: Gateway, bus: Path) -> None:
    with _platform(gw, gw.key, f"{gw.url}/dialects/platform") as client, open(bus, "rb") as f:
        answer = client.models.predict("me", "p", "yolov8n", body={"file": f})
    assert set(answer["metadata"]) == PLATFORM_METADATA


@pytest.mark.parametrize("task", TASKS)
def test_ul_cloud_predict_saves_what_the_gateway_found(gw: Gateway, bus: Path, task: str, tmp_path: Path) -> None:
    """`ul cloud predict` (the Platform CLI) with ULTRALYTICS_PLATFORM_URL and ULTRALYTICS_API_KEY: it needs `task`
    and rebuilds Results from the rows' values in order; its labels are the gateway's rows."""
    model = TASKS[task]
    out = tmp_path / "out"
    env = {
        **os.environ,
        "ULTRALYTICS_PLATFORM_URL": gw.url,
        "ULTRALYTICS_API_KEY": gw.key,
        "YOLO_CONFIG_DIR": str(tmp_path / "config"),
        "YOLO_OFFLINE": "1",
    }
    ul = Path(sys.executable).with_name("ul")
    command = [str(ul), "cloud", "predict", f"model=ul://me/project/{model}", f"source={bus}", "save_txt=True",
               f"save_dir={out}", "save=False"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    labels = (out / "labels" / f"{bus.stem}.txt").read_text().splitlines()
    rows = _v1(gw, model, bus, 0.7)["rows"]
    if task == "classify":  # the top five, best first: "confidence name"
        assert [line.split(maxsplit=1)[1] for line in labels] == [row["name"] for row in rows]
        return
    assert len(labels) == len(rows), (len(labels), len(rows))
    if task in ("detect", "pose"):  # class x y w h (normalized), as Ultralytics writes Results.boxes
        h, w = _shape(bus)
        for line, row in zip(labels, rows):
            cls, xc, yc, bw, bh = (float(v) for v in line.split()[:5])
            box = row["box"]
            want = [(box["x1"] + box["x2"]) / 2 / w, (box["y1"] + box["y2"]) / 2 / h,
                    (box["x2"] - box["x1"]) / w, (box["y2"] - box["y1"]) / h]  # fmt: skip
            assert int(cls) == row["class"] and np.allclose([xc, yc, bw, bh], want, atol=1e-3), (line, row)


# --- keys and the page ----------------------------------------------------------------------------------------------


def test_the_keys_cli_and_admin_api_set_a_keys_dialect(gw: Gateway, tmp_path: Path) -> None:
    from gateway.keys.auth import read_entries
    from gateway.keys.cli import main as keys_main

    keys = tmp_path / "keys.json"
    assert keys_main(["--file", str(keys), "create", "--name", "sdk", "--dialect", "hub-xywhn"]) == 0
    assert [e.dialect for e in read_entries(keys)] == ["hub-xywhn"]
    with pytest.raises(SystemExit):
        keys_main(["--file", str(keys), "create", "--name", "bad", "--dialect", "klingon"])
    admin = _key(gw, "dialects-admin", admin=True)
    made = requests.post(
        f"{gw.url}/v1/keys", headers={"x-api-key": admin}, json={"name": "web", "dialect": "platform"}, timeout=10
    )
    assert made.status_code == 201 and made.json()["data"]["dialect"] == "platform", made.text
    assert re.fullmatch(r"ul_[0-9a-f]{40}", made.json()["data"]["key"])
    bad = requests.post(
        f"{gw.url}/v1/keys", headers={"x-api-key": admin}, json={"name": "x", "dialect": "v3"}, timeout=10
    )
    assert bad.status_code == 400 and "'dialect'" in bad.json()["message"]
    listed = requests.get(f"{gw.url}/v1/keys", headers={"x-api-key": admin}, timeout=10).json()["data"]
    assert {k["name"]: k["dialect"] for k in listed}["web"] == "platform"


def test_the_redis_store_keeps_a_keys_dialect(redis_server: Any) -> None:
    import asyncio

    from gateway.keys.redis_store import RedisStore

    async def scenario() -> tuple[Any, Any, str]:
        store = RedisStore(redis_server.url, redis_server.password, timeout_s=2.0)
        try:
            entry, key = await store.create_key(KeyDraft("redis-dialect", ("yolov8n",), dialect="platform"))
            return await store.get_key(entry.id), await store.authenticate(key, "yolov8n", "x-api-key"), key
        finally:
            await store.close()

    stored, checked, key = asyncio.run(scenario())
    assert stored.dialect == checked.dialect == "platform" and re.fullmatch(r"ul_[0-9a-f]{40}", key)
