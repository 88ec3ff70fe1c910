"""The HTTP contract of the gateway against a real Triton: snippets from the HUB docs, arguments, every error."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import math
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import ALL_MODELS, Gateway, start_gateway, stop_gateway

PYTHON_SNIPPET = """
import requests

# API URL, use actual MODEL_ID
url = f"https://api.ultralytics.com/v1/predict/MODEL_ID"

# Headers, use actual API_KEY
headers = {"x-api-key": "API_KEY"}

# Inference arguments (optional)
data = {"size": 640, "confidence": 0.25, "iou": 0.45}

# Load image and send request
with open("path/to/image.jpg", "rb") as image_file:
    files = {"image": image_file}
    response = requests.post(url, headers=headers, files=files, data=data)

print(response.json())
"""

CURL_SNIPPET = """curl -X POST "https://api.ultralytics.com/v1/predict/MODEL_ID" \\
-H "x-api-key: API_KEY" \\
-F "image=@/path/to/image.jpg" \\
-F "size=640" \\
-F "confidence=0.25" \\
-F "iou=0.45"
"""


def _check_schema(body: dict[str, Any], task: str) -> None:
    assert body["success"] is True and body["message"] == "Inference complete."
    assert body["data"], "expected detections"
    confidences = [d["confidence"] for d in body["data"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) <= 300
    for d in body["data"]:
        assert set(d) >= {"name", "class", "confidence", "box"}
        assert set(d["box"]) == {"x1", "y1", "x2", "y2"}
        assert ("segments" in d) == (task == "segment") and ("keypoints" in d) == (task == "pose")
        if task == "pose":
            assert len(d["keypoints"]["x"]) == len(d["keypoints"]["visible"]) == 17


def _post(gw: Gateway, model: str, image: Path | bytes | None = None, **kwargs: Any) -> requests.Response:
    files = kwargs.pop("files", None)
    if image is not None:
        files = {"image": ("image.jpg", image.read_bytes() if isinstance(image, Path) else image)}
    return gw.predict(model, files=files, **kwargs)


def _error(r: requests.Response, status: int, contains: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["success"] is False and body["data"] == {}
    assert contains.lower() in body["message"].lower(), body["message"]
    return body


@pytest.mark.parametrize("model,task", [("yolov8n", "detect"), ("yolov8n-seg", "segment"), ("yolov8n-pose", "pose")])
def test_python_snippet_from_the_hub_docs_works_unchanged(
    gateway: Gateway, images: dict[str, Path], model: str, task: str
) -> None:
    code = (
        PYTHON_SNIPPET.replace("https://api.ultralytics.com", gateway.url)
        .replace("MODEL_ID", model)
        .replace("API_KEY", gateway.key)
        .replace("path/to/image.jpg", str(images["bus"]))
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<hub snippet>", "exec"), {})
    printed = out.getvalue()
    # The snippet prints the parsed JSON as a Python dict; evaluate it back and check the schema.
    body = eval(printed, {"true": True, "false": False})  # noqa: S307 - our own server's output in a test
    _check_schema(body, task)


def test_curl_snippet_from_the_hub_docs_works_unchanged(gateway: Gateway, images: dict[str, Path]) -> None:
    if not shutil.which("curl"):
        pytest.fail("curl is not installed; the README's curl example needs it")
    cmd = (
        CURL_SNIPPET.replace("https://api.ultralytics.com", gateway.url)
        .replace("MODEL_ID", "yolov8n")
        .replace("API_KEY", gateway.key)
        .replace("/path/to/image.jpg", str(images["zidane"]))
    )
    out = subprocess.run(["bash", "-c", cmd.rstrip() + " -s"], capture_output=True, timeout=60, check=True)
    _check_schema(json.loads(out.stdout), "detect")


def test_response_carries_server_timing(gateway: Gateway, images: dict[str, Path]) -> None:
    r = _post(gateway, "yolov8n", images["bus"])
    assert r.status_code == 200
    stages = {part.split(";")[0].strip() for part in r.headers["server-timing"].split(",")}
    assert {"decode", "letterbox", "triton", "postprocess", "total"} <= stages


def test_arguments_in_query_string_work(gateway: Gateway, images: dict[str, Path]) -> None:
    loose = _post(gateway, "yolov8n", images["bus"], params={"confidence": "0.1"}).json()["data"]
    strict = _post(gateway, "yolov8n", images["bus"], params={"confidence": "0.5"}).json()["data"]
    assert len(loose) > len(strict) > 0
    assert min(d["confidence"] for d in strict) >= 0.5


def test_form_field_wins_over_query_parameter(gateway: Gateway, images: dict[str, Path]) -> None:
    both = _post(gateway, "yolov8n", images["bus"], params={"confidence": "0.1"}, data={"confidence": "0.5"}).json()
    assert both["data"] and min(d["confidence"] for d in both["data"]) >= 0.5


def test_size_not_multiple_of_32_is_rounded_up(gateway: Gateway, images: dict[str, Path]) -> None:
    a = _post(gateway, "yolov8n", images["bus"], data={"size": "500"}).json()["data"]
    b = _post(gateway, "yolov8n", images["bus"], data={"size": "512"}).json()["data"]
    assert a == b and a


def test_normalize_accepts_every_spelling(gateway: Gateway, images: dict[str, Path]) -> None:
    plain = _post(gateway, "yolov8n", images["zidane"]).json()["data"]
    for spelling in ("true", "TRUE", "1", "yes", "Yes"):
        norm = _post(gateway, "yolov8n", images["zidane"], data={"normalize": spelling}).json()["data"]
        assert len(norm) == len(plain) > 0
        assert math.isclose(norm[0]["box"]["x2"], plain[0]["box"]["x2"] / 1280, abs_tol=1e-5)
    for spelling in ("false", "0", "no", "NO"):
        assert _post(gateway, "yolov8n", images["zidane"], data={"normalize": spelling}).json()["data"] == plain


def test_unknown_fields_are_ignored(gateway: Gateway, images: dict[str, Path]) -> None:
    r = _post(gateway, "yolov8n", images["bus"], data={"half": "true", "augment": "1"})
    assert r.status_code == 200 and r.json()["data"]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("size", "31", "'size'"),
        ("size", "1281", "32 to 1280"),
        ("size", "abc", "must be an integer"),
        ("size", "6.5", "must be an integer"),
        ("confidence", "0", "0.01 to 1"),
        ("confidence", "1.5", "0.01 to 1"),
        ("confidence", "nan", "'confidence'"),
        ("confidence", "inf", "'confidence'"),
        ("confidence", "high", "must be a number"),
        ("iou", "0.99", "0 to 0.95"),
        ("iou", "-0.1", "0 to 0.95"),
        ("normalize", "maybe", "true/false, 1/0, yes/no, on/off"),
    ],
)
def test_bad_argument_is_400_naming_it(
    gateway: Gateway, images: dict[str, Path], field: str, value: str, needle: str
) -> None:
    _error(_post(gateway, "yolov8n", images["bus"], data={field: value}), 400, needle)
    _error(_post(gateway, "yolov8n", images["bus"], params={field: value}), 400, needle)


def test_neither_image_nor_url_is_400(gateway: Gateway) -> None:
    _error(gateway.predict("yolov8n", data={"size": "640"}), 400, "An image file or URL must be submitted.")
    _error(gateway.predict("yolov8n"), 400, "An image file or URL must be submitted.")


def test_both_image_and_url_is_400(gateway: Gateway, images: dict[str, Path]) -> None:
    _error(_post(gateway, "yolov8n", images["bus"], data={"url": "http://example.com/a.jpg"}), 400, "not both")


def test_image_as_text_field_is_400(gateway: Gateway) -> None:
    _error(gateway.predict("yolov8n", data={"image": "bus.jpg"}), 400, "must be a file part")


def test_more_image_parts_than_the_maximum_are_400(gateway: Gateway, images: dict[str, Path]) -> None:
    data = images["tiny"].read_bytes()
    r = gateway.predict("yolov8n", files=[("image", (f"{i}.png", data)) for i in range(9)])
    _error(r, 400, "At most 8 images")


def test_missing_key_is_401(gateway: Gateway, images: dict[str, Path]) -> None:
    r = _post(gateway, "yolov8n", images["bus"], headers={})
    _error(r, 401, "Missing API key")
    assert "x-api-key" in r.headers["www-authenticate"]


@pytest.mark.parametrize("key", ["wrong", "yk_00000000_nope", "yk__", ""])
def test_wrong_key_is_401(gateway: Gateway, images: dict[str, Path], key: str) -> None:
    r = _post(gateway, "yolov8n", images["bus"], headers={"x-api-key": key})
    _error(r, 401, "API key")


def test_tampered_key_with_known_id_is_401(gateway: Gateway, images: dict[str, Path]) -> None:
    tampered = gateway.key[:-2] + ("AA" if not gateway.key.endswith("AA") else "BB")
    _error(_post(gateway, "yolov8n", images["bus"], headers={"x-api-key": tampered}), 401, "Invalid API key")


@pytest.mark.parametrize("model", ["nope", "yolov8x-cls", "..%2F..%2Fetc%2Fpasswd", "a/../../b", "%2e%2e"])
def test_unknown_model_is_404(gateway: Gateway, images: dict[str, Path], model: str) -> None:
    _error(_post(gateway, model, images["bus"]), 404, "not found")


def test_upload_over_limit_is_413(gateway: Gateway) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024 + 1)
    _error(_post(gateway, "yolov8n", big), 413, "upload limit")


def test_text_file_is_415(gateway: Gateway) -> None:
    _error(_post(gateway, "yolov8n", b"hello, this is not an image\n" * 10), 415, "not a supported image")


def test_pdf_is_415(gateway: Gateway) -> None:
    _error(_post(gateway, "yolov8n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), 415, "not a supported image")


def test_corrupt_png_is_422(gateway: Gateway, images: dict[str, Path]) -> None:
    png = images["tiny"].read_bytes()
    _error(_post(gateway, "yolov8n", png[:40]), 422, "could not be decoded")


def test_empty_file_is_422(gateway: Gateway) -> None:
    _error(_post(gateway, "yolov8n", b""), 422, "empty")


def test_decompression_bomb_is_refused_before_decoding(gateway: Gateway) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    _error(_post(gateway, "yolov8n", png), 413, "megapixels")


def test_service_keeps_serving_after_bad_inputs(gateway: Gateway, images: dict[str, Path]) -> None:
    for junk in (
        b"",
        b"\x89PNG\r\n\x1a\nxx",
        b"\xff\xd8\xff\xe0" + b"\x00" * 100,
        np.random.default_rng(0).bytes(5000),
    ):
        assert _post(gateway, "yolov8n", junk).status_code in (415, 422)
    assert _post(gateway, "yolov8n", images["bus"]).status_code == 200


def test_models_list_shows_ready_models_with_metadata(gateway: Gateway, served_models: tuple[str, ...]) -> None:
    body = requests.get(f"{gateway.url}/v1/models", timeout=10).json()
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == set(served_models)
    body["data"] = [m for m in body["data"] if m["id"] in ALL_MODELS]  # the fixtures (tests/test_trained.py: the rest)
    assert by_id["yolov8n"]["task"] == "detect" and by_id["yolov8n"]["names"]["0"] == "person"
    assert by_id["yolov8n-seg"]["task"] == "segment" and by_id["yolov8n-pose"]["kpt_shape"] == [17, 3]
    assert by_id["yolov8n-cls"]["task"] == "classify" and by_id["yolov8n-obb"]["task"] == "obb"
    assert all(m["default_size"] == (224 if m["task"] == "classify" else 640) for m in body["data"])
    assert all(m["backend"] == "python" for m in body["data"])
    assert all(m["untrained"] and "Untrained" in m["warning"] for m in body["data"])


def test_model_detail_and_unknown_model(gateway: Gateway) -> None:
    one = requests.get(f"{gateway.url}/v1/models/yolov8n-pose", timeout=10).json()
    assert one["data"]["id"] == "yolov8n-pose" and one["data"]["names"] == {"0": "person"}
    _error(requests.get(f"{gateway.url}/v1/models/nope", timeout=10), 404, "not found")


def test_health_and_readiness(gateway: Gateway, served_models: tuple[str, ...]) -> None:
    assert requests.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{gateway.url}/readyz", timeout=5)
    assert ready.status_code == 200 and sorted(ready.json()["data"]["models"]) == sorted(served_models)


def test_unknown_route_and_wrong_method_are_json(gateway: Gateway) -> None:
    _error(requests.get(f"{gateway.url}/nope", timeout=5), 404, "not found")
    _error(requests.get(f"{gateway.url}/v1/predict/yolov8n", timeout=5), 405, "not allowed")


def test_triton_down_is_503_with_retry_after(triton: Any, tmp_path: Path, images: dict[str, Path]) -> None:
    class Dead:
        grpc_url = "127.0.0.1:9"  # discard port: nothing listens
        http_url = "http://127.0.0.1:9"

    gw = start_gateway(Dead(), tmp_path)  # type: ignore[arg-type]
    try:
        r = _post(gw, "yolov8n", images["bus"])
        _error(r, 503, "not ready")
        assert int(r.headers["retry-after"]) >= 1
        _error(requests.get(f"{gw.url}/readyz", timeout=10), 503, "not ready")
        assert requests.get(f"{gw.url}/healthz", timeout=5).status_code == 200
    finally:
        stop_gateway(gw)


def test_inference_deadline_is_504(triton: Any, tmp_path: Path, images: dict[str, Path]) -> None:
    gw = start_gateway(triton, tmp_path, triton_timeout_s="0.001")
    try:
        _error(_post(gw, "yolov8n", images["bus"]), 504, "timed out")
    finally:
        stop_gateway(gw)


# --- url -----------------------------------------------------------------------------------------------------------


class _Images(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/redirect-to-loopback"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/bus.jpg")  # type: ignore[attr-defined]
            self.end_headers()
            return
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/bus.jpg")
            self.end_headers()
            return
        if self.path == "/page.html":
            body = b"<html><body>not an image</body></html>"
        else:
            f = self.root / self.path.lstrip("/")
            if not f.is_file():
                self.send_error(404)
                return
            body = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_server(images: dict[str, Path]) -> Iterator[str]:
    """A loopback HTTP server with the test images; the gateway allows it by the name 'localhost' only."""
    _Images.root = images["bus"].parent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def url_gateway(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(triton, tmp_path_factory.mktemp("gateway-url"), url_allow_hosts="localhost")
    yield gw
    stop_gateway(gw)


def test_url_image_gives_same_result_as_upload(
    url_gateway: Gateway, image_server: str, images: dict[str, Path]
) -> None:
    by_url = url_gateway.predict("yolov8n", data={"url": f"{image_server}/bus.jpg"})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["data"] == _post(url_gateway, "yolov8n", images["bus"]).json()["data"]
    by_query = url_gateway.predict("yolov8n", params={"url": f"{image_server}/bus.jpg"})
    assert by_query.json()["data"] == by_url.json()["data"]


def test_url_redirect_within_allowed_host_is_followed(url_gateway: Gateway, image_server: str) -> None:
    assert url_gateway.predict("yolov8n", data={"url": f"{image_server}/redirect"}).status_code == 200


def test_url_not_found_is_502(url_gateway: Gateway, image_server: str) -> None:
    _error(url_gateway.predict("yolov8n", data={"url": f"{image_server}/missing.jpg"}), 502, "HTTP 404")


def test_url_html_page_is_415(url_gateway: Gateway, image_server: str) -> None:
    _error(url_gateway.predict("yolov8n", data={"url": f"{image_server}/page.html"}), 415, "not a supported image")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/bus.jpg",
        "http://0x7f000001:{port}/bus.jpg",
        "http://2130706433:{port}/bus.jpg",
        "http://127.1:{port}/bus.jpg",
        "http://[::1]:{port}/bus.jpg",
        "http://[::ffff:127.0.0.1]:{port}/bus.jpg",
        "http://0:{port}/bus.jpg",
        "file:///etc/passwd",
        "gopher://localhost:70/",
        "ftp://localhost/bus.jpg",
        "http://user:pw@localhost:{port}/bus.jpg",
        "http://localhost:22/",
    ],
)
def test_url_to_private_or_odd_targets_is_400(url_gateway: Gateway, image_server: str, url: str) -> None:
    port = image_server.rsplit(":", 1)[1]
    _error(url_gateway.predict("yolov8n", data={"url": url.format(port=port)}), 400, "URL")


def test_url_redirect_to_loopback_is_refused(url_gateway: Gateway, image_server: str) -> None:
    _error(url_gateway.predict("yolov8n", data={"url": f"{image_server}/redirect-to-loopback"}), 400, "not allowed")


@pytest.mark.parametrize("where", ["data", "params"])
def test_repeated_argument_is_400(gateway: Gateway, images: dict[str, Path], where: str) -> None:
    repeated = [("size", "320"), ("size", "640")]
    r = _post(gateway, "yolov8n", images["bus"], **{where: repeated})
    _error(r, 400, "more than once")


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("max_det", "0", "1 to 300"),
        ("max_det", "301", "1 to 300"),
        ("classes", "a,b", "class ids"),
        ("classes", "-1", "class ids"),
        ("agnostic", "perhaps", "true/false"),
    ],
)
def test_bad_nms_control_is_400(gateway: Gateway, images: dict[str, Path], field: str, value: str, needle: str) -> None:
    _error(_post(gateway, "yolov8n", images["bus"], data={field: value}), 400, needle)


def test_gateway_runtime_imports_neither_torch_nor_ultralytics() -> None:
    """Light runtime: every gateway module imported (and the app built) in a fresh interpreter loads no torch."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, gateway\n"
        "for m in pkgutil.walk_packages(gateway.__path__, 'gateway.'): importlib.import_module(m.name)\n"
        "from gateway.app import create_app; create_app()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'ultralytics', 'onnxruntime')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_readme_documents_every_gateway_setting() -> None:
    """The README's configuration table names exactly the settings the gateway reads, with their defaults."""
    import dataclasses
    import re

    from gateway.settings import PREFIX, Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Configuration (gateway)", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(GATEWAY_[A-Z_]+)` \| ([^|]+) \|", table, flags=re.M))
    settings = {PREFIX + f.name.upper(): getattr(Settings(), f.name) for f in dataclasses.fields(Settings)}
    assert set(documented) == set(settings)
    for name, default in settings.items():
        shown = documented[name].strip().strip("`")
        if isinstance(default, bool):
            assert shown == str(default).lower(), name
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert float(shown) == float(default), name
