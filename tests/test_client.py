"""The Python client (`yolo_triton_client`) against real gateways over HTTP: sources, typed rows, errors, retries,
the async client, `predict_many`, and the conversion to `supervision.Detections`."""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import supervision as sv
from PIL import Image

from gateway.keys.auth import KeyDraft, create_key
from tests.conftest import ROOT, Gateway, start_gateway, stop_gateway
from tritonlocal import launcher
from yolo_triton_client import (
    ApiError,
    AsyncClient,
    AuthError,
    Classification,
    Client,
    Detection,
    InvalidRequest,
    NotFound,
    OrientedBox,
    Prediction,
    RateLimited,
    TransportError,
    to_supervision,
)
from yolo_triton_client.errors import retry_after
from yolo_triton_client.results import parse_row, prediction_from_v1
from yolo_triton_client.sources import header_shape


def _client(gw: Gateway, **kwargs: Any) -> Client:
    return Client(gw.url, gw.key, **kwargs)


def _http_rows(gw: Gateway, model: str, image: Path, **data: Any) -> dict[str, Any]:
    """The raw HTTP JSON for the same request, without the client."""
    r = gw.predict(model, files={"image": ("image.jpg", image.read_bytes())}, data=data)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _summary(p: Prediction) -> list[tuple[Any, ...]]:
    return [(d.name, d.class_id, d.confidence, d.box.xyxy) for d in p.detections]


def _retries_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "yolo_triton_client" and "retrying" in r.getMessage()]


# --- sources and typed results -------------------------------------------------------------------------------------


def test_predict_from_path_equals_the_raw_http_json(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client:
        p = client.predict("yolov8n", images["bus"])
    raw = _http_rows(gateway, "yolov8n", images["bus"])
    assert p.raw == raw and p.model == "yolov8n" and p.task == "detect"
    assert len(p.detections) > 0 and p.rows == p.detections and not p.classifications
    assert _summary(p) == [
        (r["name"], r["class"], r["confidence"], (r["box"]["x1"], r["box"]["y1"], r["box"]["x2"], r["box"]["y2"]))
        for r in raw["data"]
    ]
    assert p.shape == cv2.imread(str(images["bus"])).shape[:2]
    assert all(d.segments is None and d.keypoints is None for d in p.detections)


def test_bytes_file_object_str_and_array_sources_give_the_same_result(
    gateway: Gateway, images: dict[str, Path]
) -> None:
    path = images["zidane"]
    array = cv2.imread(str(path))  # BGR uint8: sent as lossless PNG, so the server sees the same pixels
    with _client(gateway) as client:
        by_path = client.predict("yolov8n", path)
        by_str = client.predict("yolov8n", str(path))
        by_bytes = client.predict("yolov8n", path.read_bytes())
        with path.open("rb") as f:
            by_file = client.predict("yolov8n", f)
        by_array = client.predict("yolov8n", array)
    assert len(by_path) > 0
    for other in (by_str, by_bytes, by_file, by_array):
        assert other.raw["data"] == by_path.raw["data"]
        assert other.shape == array.shape[:2]


def test_segment_and_pose_rows_are_typed(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client:
        seg = client.predict("yolov8n-seg", images["bus"])
        pose = client.predict("yolov8n-pose", images["bus"])
    assert seg.task == "segment" and len(seg.detections) > 0
    for d, row in zip(seg.detections, seg.raw["data"], strict=True):
        assert d.segments is not None and len(d.segments.x) == len(d.segments.y) > 2
        assert (d.segments.x, d.segments.y) == (row["segments"]["x"], row["segments"]["y"])
    assert pose.task == "pose" and len(pose.detections) > 0
    for d, row in zip(pose.detections, pose.raw["data"], strict=True):
        assert d.keypoints is not None and len(d.keypoints.x) == 17 and d.keypoints.visible is not None
        assert d.keypoints.visible == row["keypoints"]["visible"]


def test_arguments_reach_the_server(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client:
        p = client.predict(
            "yolov8n",
            images["bus"],
            size=320,
            confidence=0.3,
            iou=0.5,
            max_det=3,
            classes=[0, 5],
            agnostic=True,
            normalize=True,
        )
    fields = {
        "size": "320",
        "confidence": "0.3",
        "iou": "0.5",
        "max_det": "3",
        "classes": "0,5",
        "agnostic": "true",
        "normalize": "true",
    }
    assert p.raw == _http_rows(gateway, "yolov8n", images["bus"], **fields)
    assert 0 < len(p) <= 3 and p.normalized
    assert all(d.confidence >= 0.3 and d.class_id in (0, 5) and max(d.box.xyxy) <= 1.0 for d in p.detections)


def test_unknown_model_raises_not_found(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client, pytest.raises(NotFound) as info:
        client.predict("no-such-model", images["tiny"])
    assert info.value.status == 404 and "no-such-model" in info.value.message


def test_corrupt_image_raises_invalid_request_with_the_server_message(gateway: Gateway) -> None:
    with _client(gateway, retries=3) as client, pytest.raises(InvalidRequest) as info:
        client.predict("yolov8n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert info.value.status == 422 and "could not be decoded" in info.value.message
    assert info.value.body["success"] is False


def test_models_lists_the_served_models(gateway: Gateway) -> None:
    with _client(gateway) as client:
        models = {m["id"]: m for m in client.models()}
    assert models["yolov8n-seg"]["task"] == "segment" and models["yolov8n"]["names"]


def test_context_manager_closes_the_connection_pool(gateway: Gateway) -> None:
    with _client(gateway) as client:
        client.models()
        client.models()
    assert client._http.is_closed
    assert "yk_" not in repr(client)


def test_importing_the_client_loads_neither_numpy_nor_pillow_nor_opencv() -> None:
    code = (
        "import sys, yolo_triton_client; "
        "print([m for m in ('numpy', 'PIL', 'cv2', 'supervision', 'gateway') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# --- URL sources ---------------------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host(images: dict[str, Path]) -> Iterator[str]:
    """The test images over HTTP on loopback, by the name 'localhost'."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(images["tiny"].parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_port}"
    server.shutdown()


def test_url_source_is_fetched_by_the_server(
    triton: launcher.TritonServer, tmp_path: Path, image_host: str, images: dict[str, Path]
) -> None:
    gw = start_gateway(triton, tmp_path, url_allow_hosts="localhost")
    try:
        with _client(gw) as client:
            by_url = client.predict("yolov8n", f"{image_host}/portrait.jpg")
            by_upload = client.predict("yolov8n", images["portrait"])
        assert by_url.raw == by_upload.raw and len(by_url) > 0
        assert by_url.shape is None  # the v1 answer does not carry it and the client never saw the image
    finally:
        stop_gateway(gw)


def test_url_to_a_private_host_is_refused_without_retry(gateway: Gateway, image_host: str) -> None:
    started = time.monotonic()
    with _client(gateway, retries=3) as client, pytest.raises(InvalidRequest) as info:
        client.predict("yolov8n", f"{image_host}/portrait.jpg")
    assert info.value.status == 400 and time.monotonic() - started < 1.0


# --- async client --------------------------------------------------------------------------------------------------


def test_async_client_gives_the_same_results_as_the_sync_client(gateway: Gateway, images: dict[str, Path]) -> None:
    array = cv2.imread(str(images["bus"]))

    async def scenario() -> list[Prediction]:
        async with AsyncClient(gateway.url, gateway.key) as client:
            return list(
                await asyncio.gather(
                    client.predict("yolov8n", images["bus"]),
                    client.predict("yolov8n", array),
                    client.predict("yolov8n-seg", images["zidane"].read_bytes(), size=320),
                )
            )

    by_path, by_array, seg = asyncio.run(scenario())
    with _client(gateway) as client:
        assert by_path.raw == by_array.raw == client.predict("yolov8n", images["bus"]).raw
        assert seg.raw == client.predict("yolov8n-seg", images["zidane"], size=320).raw
    assert len(by_path) > 0 and seg.task == "segment" and by_array.shape == array.shape[:2]

    async def unauthorised() -> None:
        async with AsyncClient(gateway.url, "yk_wrong_key") as client:
            await client.predict("yolov8n", images["tiny"])

    with pytest.raises(AuthError):
        asyncio.run(unauthorised())


# --- errors and retries --------------------------------------------------------------------------------------------


def _rejections(gw: Gateway, reason: str) -> float:
    text = requests.get(f"{gw.url}/metrics", timeout=10).text
    match = re.search(rf'^yolo_rejections_total\{{reason="{reason}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_unauthorised_raises_at_once_without_retrying(
    gateway: Gateway, images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    before = _rejections(gateway, "auth")
    started = time.monotonic()
    client = Client(gateway.url, "yk_nope_nope", retries=5)
    with caplog.at_level(logging.INFO, "yolo_triton_client"), client, pytest.raises(AuthError) as info:
        client.predict("yolov8n", images["tiny"])
    assert info.value.status == 401 and "key" in info.value.message.lower()
    assert time.monotonic() - started < 1.0 and not _retries_logged(caplog)
    assert _rejections(gateway, "auth") - before == 1  # the server saw exactly one attempt


def test_rate_limited_request_waits_for_retry_after_then_succeeds(
    gateway: Gateway, images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, key = create_key(gateway.keys_file, KeyDraft("client-limited", rate=0.5))  # one request per 2 s
    time.sleep(1.2)  # the gateway re-reads the keys file at most once a second
    tiny = images["tiny"]
    with Client(gateway.url, key, retries=0) as no_retry:
        no_retry.predict("yolov8n", tiny)  # takes the only token
        with pytest.raises(RateLimited) as info:
            no_retry.predict("yolov8n", tiny)
    assert info.value.status == 429 and info.value.retry_after is not None and info.value.retry_after >= 1
    with Client(gateway.url, key, max_retry_wait=0.5) as impatient, pytest.raises(RateLimited):
        impatient.predict("yolov8n", tiny)  # Retry-After is longer than the longest wait allowed: no retry

    with caplog.at_level(logging.INFO, "yolo_triton_client"), Client(gateway.url, key, retries=3) as client:
        started = time.monotonic()
        p = client.predict("yolov8n", tiny)
        waited = time.monotonic() - started
    assert isinstance(p, Prediction) and p.raw["success"] is True
    logged = _retries_logged(caplog)
    assert logged and "429" in logged[0]
    assert waited >= 1.0, waited  # it slept for Retry-After (whole seconds, at least 1) instead of hammering

    async def again() -> tuple[Prediction, float]:
        async with AsyncClient(gateway.url, key, retries=3) as aclient:
            t0 = time.monotonic()
            return await aclient.predict("yolov8n", tiny), time.monotonic() - t0

    p, waited = asyncio.run(again())
    assert p.raw["success"] is True and waited >= 1.0, waited


class _HeldImage(http.server.BaseHTTPRequestHandler):
    """Serves `image` once `release` is set: a prediction of its URL holds its in-flight slot until then (from
    the moment `asked` is set)."""

    image = b""
    asked = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        self.asked.set()
        self.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: Any) -> None:
        pass


def test_busy_gateway_503_is_retried_after_retry_after(
    triton: launcher.TritonServer, tmp_path: Path, images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # the in-flight slot is taken once a body is in, so it is held by a request whose `url` has not answered yet
    gw = start_gateway(triton, tmp_path, max_inflight="1", max_inflight_per_key="2", url_allow_hosts="localhost")
    tiny = images["tiny"].read_bytes()
    _HeldImage.image, _HeldImage.asked, _HeldImage.release = tiny, threading.Event(), threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeldImage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answers: list[int] = []
    held = threading.Thread(
        target=lambda: answers.append(
            gw.predict("yolov8n", data={"url": f"http://localhost:{server.server_port}/held.png"}).status_code
        )
    )
    try:
        held.start()
        assert _HeldImage.asked.wait(30), "the gateway never fetched the held URL"
        probe = gw.predict("yolov8n", files={"image": tiny})
        assert probe.status_code == 503 and probe.headers["retry-after"] == "1"

        release = threading.Timer(0.5, _HeldImage.release.set)
        release.start()
        with caplog.at_level(logging.INFO, "yolo_triton_client"), _client(gw, retries=3) as client:
            started = time.monotonic()
            p = client.predict("yolov8n", tiny)
            waited = time.monotonic() - started
        held.join(30)
        assert answers == [200]
        assert p.raw["success"] is True
        logged = _retries_logged(caplog)
        assert logged and "503" in logged[0] and waited >= 1.0, (logged, waited)
    finally:
        _HeldImage.release.set()
        server.shutdown()
        stop_gateway(gw)


def test_connection_refused_is_retried_with_backoff_then_raises(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    client = Client(f"http://127.0.0.1:{port}", "k", retries=2, backoff=0.2)
    with (
        caplog.at_level(logging.INFO, "yolo_triton_client"),
        client,
        pytest.raises(TransportError, match="ConnectError"),
    ):
        client.predict("yolov8n", b"x")
    assert len(_retries_logged(caplog)) == 2
    assert time.monotonic() - started >= 0.1 + 0.2  # backoff 0.2 s then 0.4 s, jittered down to half at most


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: retry now
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 28 <= (retry_after(future) or 0) <= 30


# --- local image shape ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_shape_read_from_the_header_is_what_opencv_decodes_or_unknown(fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(out, fmt, exif=exif.tobytes())
    decoded = cv2.imdecode(np.frombuffer(out.getvalue(), np.uint8), cv2.IMREAD_COLOR)  # as the gateway decodes
    shape = header_shape(out.getvalue())
    assert shape is None or shape == decoded.shape[:2]
    if fmt in ("JPEG", "PNG") or orientation in (1, 3):
        assert shape is not None


# --- supervision ---------------------------------------------------------------------------------------------------


def test_to_supervision_detect_matches_the_json(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client:
        p = client.predict("yolov8n", images["bus"])
    det = to_supervision(p)
    rows = p.raw["data"]
    assert isinstance(det, sv.Detections) and len(det) == len(rows) > 0 and det.mask is None
    np.testing.assert_array_equal(det.xyxy, np.float32([[r["box"][k] for k in ("x1", "y1", "x2", "y2")] for r in rows]))
    np.testing.assert_array_equal(det.confidence, np.float32([r["confidence"] for r in rows]))
    assert det.class_id.tolist() == [r["class"] for r in rows]
    assert det.data["class_name"].tolist() == [r["name"] for r in rows]
    assert len(det[det.class_id == rows[0]["class"]]) >= 1  # filtering works on the data fields too


def test_to_supervision_rasterises_segments_at_the_source_shape(gateway: Gateway, images: dict[str, Path]) -> None:
    array = cv2.imread(str(images["bus"]))
    with _client(gateway) as client:
        p = client.predict("yolov8n-seg", array)
        normalised = client.predict("yolov8n-seg", array, normalize=True)
    det = to_supervision(p)
    assert det.mask is not None and det.mask.shape == (len(p), *array.shape[:2]) and det.mask.dtype == bool
    for mask, d in zip(det.mask, p.detections, strict=True):
        x1, y1, x2, y2 = (round(v) for v in d.box.xyxy)
        inside = mask[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2].sum()
        assert mask.sum() > 0 and inside / mask.sum() > 0.99  # the outline lies inside its box
    scaled = to_supervision(normalised)
    np.testing.assert_allclose(scaled.xyxy, det.xyxy, atol=0.01 * max(array.shape))
    assert scaled.mask is not None and np.logical_xor(scaled.mask, det.mask).sum() < 0.02 * det.mask.sum()
    with pytest.raises(ValueError, match="shape"):
        to_supervision(prediction_from_v1("yolov8n-seg", p.raw, None, False))
    assert to_supervision(prediction_from_v1("yolov8n-seg", p.raw, None, False), shape=array.shape[:2]).mask is not None


def test_to_supervision_keeps_pose_keypoints(gateway: Gateway, images: dict[str, Path]) -> None:
    with _client(gateway) as client:
        p = client.predict("yolov8n-pose", images["zidane"])
    det = to_supervision(p)
    assert len(det) > 0 and det.data["keypoints"].shape == (len(det), 17, 2)
    assert det.data["keypoints_confidence"].tolist() == [
        np.float32(r["keypoints"]["visible"]).tolist() for r in p.raw["data"]
    ]


OBB_ROW = {
    "name": "plane", "class": 0, "confidence": 0.9,
    "box": {"x1": 10.0, "y1": 5.0, "x2": 30.0, "y2": 15.0, "x3": 20.0, "y3": 35.0, "x4": 0.0, "y4": 25.0},
}  # fmt: skip
CLASSIFY_ROWS = [
    {"name": "tabby", "class": 281, "confidence": 0.6},
    {"name": "tiger_cat", "class": 282, "confidence": 0.2},
]


def test_served_classify_and_obb_models_give_typed_rows(gateway: Gateway, images: dict[str, Path]) -> None:
    """The real cls and obb fixture models through the client: typed rows equal the JSON, supervision gets corners."""
    with _client(gateway) as client:
        cls = client.predict("yolov8n-cls", images["bus"])
        obb = client.predict("yolov8n-obb", images["bus"])
    assert cls.task == "classify" and len(cls.classifications) == 5 and not cls.detections
    assert [(c.name, c.class_id, c.confidence) for c in cls.classifications] == [
        (r["name"], r["class"], r["confidence"]) for r in cls.raw["data"]
    ]
    assert obb.task == "obb" and obb.detections and all(isinstance(d.box, OrientedBox) for d in obb.detections)
    first, row = obb.detections[0], obb.raw["data"][0]
    assert first.box.points == [(row["box"][f"x{i}"], row["box"][f"y{i}"]) for i in range(1, 5)]
    det = to_supervision(obb)
    assert len(det) == len(obb.detections)
    np.testing.assert_allclose(det.data["xyxyxyxy"][0], np.float32(first.box.points), atol=1e-3)


def test_obb_and_classify_rows_follow_the_contract() -> None:
    obb = prediction_from_v1("yolov8n-obb", {"success": True, "data": [OBB_ROW]}, None, False)
    (d,) = obb.detections
    assert obb.task == "obb" and isinstance(d.box, OrientedBox) and d.box.xyxy == (0.0, 5.0, 30.0, 35.0)
    det = to_supervision(obb)
    assert det.data["xyxyxyxy"].shape == (1, 4, 2) and det.data["xyxyxyxy"][0, 2].tolist() == [20.0, 35.0]
    np.testing.assert_array_equal(det.xyxy, [[0, 5, 30, 35]])

    cls = prediction_from_v1("yolov8n-cls", {"success": True, "data": CLASSIFY_ROWS}, None, False)
    assert cls.task == "classify" and not cls.detections
    assert cls.classifications == [Classification("tabby", 281, 0.6), Classification("tiger_cat", 282, 0.2)]
    with pytest.raises(ValueError, match="classification"):
        to_supervision(cls)
    assert isinstance(parse_row({"name": "a", "class": 1, "confidence": 0.5, "box": OBB_ROW["box"]}), Detection)


def test_to_supervision_without_supervision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # what `import supervision` meets when it is not installed
    with pytest.raises(ImportError, match=r"yolo-triton\[client-supervision\]"):
        to_supervision(prediction_from_v1("m", {"data": []}, None, False))


def test_installing_supervision_kept_the_headless_opencv() -> None:
    from importlib import metadata

    import supervision._cv2 as sv_cv2

    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "opencv-python-headless" in installed and "opencv-python" not in installed
    assert sv_cv2._IS_CV2_AVAILABLE and cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[0]


# --- predict_many (POST /api/models/{model}/predict) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_route(gateway: Gateway) -> None:
    """Skip while the gateway lacks the batch route; with it, a request without a key is a 401, not a 404."""
    r = requests.post(f"{gateway.url}/api/models/yolov8n/predict", timeout=30)
    if r.status_code == 404:
        pytest.skip(
            "POST /api/models/{model_id}/predict (the batch route predict_many uses) is not in this gateway yet"
        )


CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def test_predict_many_returns_one_result_or_error_per_image_in_order(
    batch_route: None, gateway: Gateway, images: dict[str, Path]
) -> None:
    array = cv2.imread(str(images["zidane"]))
    with _client(gateway) as client:
        # iou given: the batch route's default is 0.7 (that of YOLO.predict), v1's is 0.45
        results = client.predict_many(
            "yolov8n", [images["bus"], CORRUPT_PNG, array, images["tiny"].read_bytes()], iou=0.45
        )
        singles = [client.predict("yolov8n", s) for s in (images["bus"], array, images["tiny"])]
    assert len(results) == 4
    bad = results[1]
    assert isinstance(bad, ApiError) and bad.status == 400 and bad.message  # the Platform's route: a 422 is a 400
    for result, single in zip((results[0], results[2], results[3]), singles, strict=True):
        assert isinstance(result, Prediction)
        assert result.raw["results"] == single.raw["data"]
        assert result.shape == single.shape and result.speed is not None and result.speed.inference is not None
    assert len(results[0].detections) > 0  # type: ignore[union-attr]


def test_predict_many_sends_more_images_than_one_request_takes(
    batch_route: None, gateway: Gateway, images: dict[str, Path]
) -> None:
    tiny = images["tiny"].read_bytes()
    with _client(gateway) as client:
        results = client.predict_many("yolov8n", [tiny] * 10, confidence=0.3, batch_size=8)  # two requests: 8 + 2
    first = results[0]
    assert isinstance(first, Prediction) and len(results) == 10
    assert all(isinstance(r, Prediction) and r.raw["results"] == first.raw["results"] for r in results)


def test_async_predict_many_matches_the_sync_one(batch_route: None, gateway: Gateway, images: dict[str, Path]) -> None:
    sources = [images["bus"], images["zidane"]]

    async def scenario() -> list[Prediction | ApiError]:
        async with AsyncClient(gateway.url, gateway.key) as client:
            return await client.predict_many("yolov8n-seg", sources)

    got = asyncio.run(scenario())
    with _client(gateway) as client:
        want = client.predict_many("yolov8n-seg", sources)
    assert [r.raw["results"] for r in got if isinstance(r, Prediction)] == [
        r.raw["results"] for r in want if isinstance(r, Prediction)
    ]
    assert len(got) == 2 and all(isinstance(r, Prediction) and r.task == "segment" for r in got)


def test_predict_many_reports_each_error_when_every_image_fails(batch_route: None, gateway: Gateway) -> None:
    """The server answers a batch with no good image by the first image's error; the client still gives one each."""
    sources = [CORRUPT_PNG, b"just some text", CORRUPT_PNG]
    with _client(gateway) as client:
        results = client.predict_many("yolov8n", sources)

    async def scenario() -> list[Prediction | ApiError]:
        async with AsyncClient(gateway.url, gateway.key) as aclient:
            return await aclient.predict_many("yolov8n", sources)

    for got in (results, asyncio.run(scenario())):
        # the Platform's route answers a file that does not decode (422) or is no image (415) with 400: the
        # messages still tell them apart
        assert [(type(r), getattr(r, "status", None)) for r in got] == [(InvalidRequest, 400)] * 3
        assert ["not a supported image" in r.message for r in got if isinstance(r, ApiError)] == [False, True, False]
        assert all("Image 1 of" not in r.message for r in got if isinstance(r, ApiError))


def test_predict_many_refuses_urls() -> None:
    with Client("http://127.0.0.1:9", "k") as client, pytest.raises(ValueError, match="one at a time"):
        client.predict_many("yolov8n", ["https://example.com/a.jpg"])
