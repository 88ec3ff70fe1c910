"""`format=image|png` through the real gateway, and the try-it page at `/` in a real headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from numpy.typing import NDArray

from tests.conftest import Gateway

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "install Debian's Chromium and Playwright for Python: `apt-get install -y chromium` and "
    "`.venv/bin/pip install playwright` (never `playwright install`: the tests drive the system Chromium)"
)


def _decode(content: bytes) -> NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the response does not decode as an image"
    return np.asarray(image, np.uint8)


def _edge_pixels(data: list[dict[str, Any]], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """Pixels on the outlines of the boxes in `data` (pixels), where the drawing must show."""
    mask = np.zeros(shape[:2], np.uint8)
    for d in data:
        b = d["box"]
        cv2.rectangle(mask, (int(b["x1"]), int(b["y1"])), (int(b["x2"]), int(b["y2"])), 1, 1)
    return mask.astype(bool)


def _far_pixels(data: list[dict[str, Any]], shape: tuple[int, ...], margin: int = 40) -> NDArray[np.bool_]:
    """Pixels well away from every box and its label tab, where the drawing must not show."""
    near = np.zeros(shape[:2], bool)
    for d in data:
        b = d["box"]
        x1, y1 = max(int(b["x1"]) - margin, 0), max(int(b["y1"]) - margin, 0)
        near[y1 : int(b["y2"]) + margin, x1 : int(b["x2"]) + 8 * margin] = True  # labels run right of x1
    return ~near


# ---------------------------------------------------------------- format=image|png through the gateway


@pytest.mark.parametrize("model", ["yolov8n", "yolov8n-seg", "yolov8n-pose"])
def test_format_png_returns_the_input_with_detections_drawn(
    gateway: Gateway, images: dict[str, Path], model: str
) -> None:
    path = images["bus"]
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    fields = {"confidence": "0.6"}  # few enough detections that some of the image stays far from all of them
    data = gateway.predict(model, files={"image": path.read_bytes()}, data=fields).json()["data"]
    assert data, "the fixture models detect plenty on bus.jpg"
    r = gateway.predict(model, files={"image": path.read_bytes()}, data={**fields, "format": "png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert "render" in r.headers["server-timing"]
    annotated = _decode(r.content)
    assert annotated.shape == original.shape
    changed = (annotated != original).any(axis=2)
    assert changed[_edge_pixels(data, original.shape)].mean() > 0.9, "box outlines are drawn"
    far = _far_pixels(data, original.shape)
    assert far.mean() > 0.05 and not changed[far].any(), "pixels away from every detection are untouched"
    if model == "yolov8n-seg":
        d = max(data, key=lambda d: len(d["segments"]["x"]))
        poly = np.zeros(original.shape[:2], np.uint8)
        pts = np.round(np.stack([d["segments"]["x"], d["segments"]["y"]], 1)).astype(np.int32)
        cv2.fillPoly(poly, [pts], (1,))
        inside = cv2.erode(poly, np.ones((9, 9), np.uint8)).astype(bool)
        assert inside.any() and changed[inside].mean() > 0.9, "the mask is filled"


def test_format_png_draws_oriented_boxes_as_polygons(gateway: Gateway, images: dict[str, Path]) -> None:
    path = images["zidane"]
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    data = gateway.predict("yolov8n-obb", files={"image": path.read_bytes()}).json()["data"]
    assert data and all("x4" in d["box"] for d in data)
    r = gateway.predict("yolov8n-obb", files={"image": path.read_bytes()}, data={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    changed = (_decode(r.content) != original).any(axis=2)
    edges = np.zeros(original.shape[:2], np.uint8)
    for d in data:
        corners = np.array([[d["box"][f"x{i}"], d["box"][f"y{i}"]] for i in range(1, 5)]).astype(int)
        cv2.polylines(edges, [corners.reshape(-1, 1, 2)], True, (1,), 1)
    assert edges.any() and changed[edges.astype(bool)].mean() > 0.9, "every turned outline is drawn"
    assert changed.mean() < 0.5, "outlines, not filled shapes"


def test_format_png_writes_a_classifiers_top5_in_the_corner(gateway: Gateway, images: dict[str, Path]) -> None:
    path = images["bus"]
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    data = gateway.predict("yolov8n-cls", files={"image": path.read_bytes()}).json()["data"]
    assert len(data) == 5 and all("box" not in d for d in data)
    r = gateway.predict("yolov8n-cls", files={"image": path.read_bytes()}, data={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    changed = (_decode(r.content) != original).any(axis=2)
    h, w = changed.shape
    assert changed[: h // 3, : w // 2].mean() > 0.05, "the five lines are written"
    assert not changed[h // 3 :, :].any() and not changed[:, int(w * 0.75) :].any(), "the rest of the image is as sent"


def test_format_image_is_a_jpeg_of_the_same_size(gateway: Gateway, images: dict[str, Path]) -> None:
    path = images["zidane"]
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    data = gateway.predict("yolov8n", files={"image": path.read_bytes()}).json()["data"]
    r = gateway.predict("yolov8n", files={"image": path.read_bytes()}, data={"format": "image"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content.startswith(b"\xff\xd8\xff")
    annotated = _decode(r.content)
    assert annotated.shape == original.shape
    diff = np.abs(annotated.astype(int) - original.astype(int)).max(axis=2)
    edges = _edge_pixels(data, original.shape)
    assert data and diff[edges].mean() > 4 * max(diff[~edges].mean(), 1.0), "the boxes stand out of JPEG noise"


def test_format_as_query_parameter_and_jpg_spelling(gateway: Gateway, images: dict[str, Path]) -> None:
    body = images["bus"].read_bytes()
    query = gateway.predict("yolov8n", files={"image": body}, params={"format": "PNG"})
    assert query.status_code == 200 and query.headers["content-type"] == "image/png"
    jpg = gateway.predict("yolov8n", files={"image": body}, data={"format": "jpg"})
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"


def test_format_png_with_normalize_draws_in_pixels(gateway: Gateway, images: dict[str, Path]) -> None:
    body = images["bus"].read_bytes()
    plain = _decode(gateway.predict("yolov8n", files={"image": body}, data={"format": "png"}).content)
    norm = gateway.predict("yolov8n", files={"image": body}, data={"format": "png", "normalize": "true"})
    assert norm.status_code == 200
    assert ((_decode(norm.content) != plain).any(axis=2)).mean() < 0.01, "same drawing (up to rounding)"


def test_json_is_unchanged_when_format_is_absent_or_json(gateway: Gateway, images: dict[str, Path]) -> None:
    body = images["bus"].read_bytes()
    absent = gateway.predict("yolov8n-seg", files={"image": body})
    explicit = gateway.predict("yolov8n-seg", files={"image": body}, data={"format": "json"})
    for r in (absent, explicit):
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert absent.json() == explicit.json()
    assert absent.json()["success"] is True and absent.json()["data"]


@pytest.mark.parametrize("value", ["gif", "svg", "image/png", "x" * 100])
def test_unknown_format_is_a_400_json_error(gateway: Gateway, images: dict[str, Path], value: str) -> None:
    r = gateway.predict("yolov8n", files={"image": images["bus"].read_bytes()}, data={"format": value})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["success"] is False and body["data"] == {} and "format" in body["message"]


def test_page_and_assets_are_served(gateway: Gateway) -> None:
    page = requests.get(f"{gateway.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        assert asset in page.text
        r = requests.get(f"{gateway.url}{asset}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert links and all(link.startswith("/") for link in links), f"everything comes from this server: {links}"


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; missing either is a failure that says how to install them."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed: {INSTALL_HINT}")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def open_page(browser: Any, url: str) -> Iterator[Any]:
    """A fresh browser context (empty local storage) on the page at `url`, once its models are listed; JavaScript
    errors fail the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(60_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium logs every non-2xx fetch as "Failed to load resource"; the error tests cause those on purpose.
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load" not in m.text else None)
    pg.goto(f"{url}/")
    pg.wait_for_selector("#model:not([disabled])")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any, gateway: Gateway) -> Iterator[Any]:
    """The gateway's page in a fresh browser context (`open_page`)."""
    with open_page(browser, gateway.url) as pg:
        yield pg


def _run(page: Any, key: str, model: str, image: Path, **fields: str) -> dict[str, Any]:
    """Enter the key, pick the model, set `fields`, upload the image, wait for the drawing; the JSON the page shows."""
    page.fill("#api-key", key)
    page.select_option("#model", model)  # resets size to the model's default
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#overlay[data-detections]")
    body: dict[str, Any] = json.loads(page.text_content("#json") or "")
    return body


def _painted_pixels(page: Any) -> int:
    """Non-transparent pixels on the overlay canvas."""
    return int(
        page.evaluate(
            """() => {
              const c = document.getElementById('overlay');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
              return n;
            }"""
        )
    )


@pytest.mark.parametrize("model", ["yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-obb", "yolov8n-cls"])
def test_page_draws_every_detection_of_an_uploaded_image(
    page: Any, gateway: Gateway, images: dict[str, Path], tmp_path: Path, model: str
) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    body = _run(page, gateway.key, model, images["bus"])
    assert body["success"] is True and len(body["data"]) > 0
    assert page.get_attribute("#overlay", "data-detections") == str(len(body["data"]))
    assert page.is_hidden("#error")
    width, height = page.evaluate(
        "() => [document.getElementById('overlay').width, document.getElementById('overlay').height]"
    )
    original = cv2.imread(str(images["bus"]), cv2.IMREAD_COLOR)
    assert (height, width) == original.shape[:2], "the canvas is in image pixels"
    assert _painted_pixels(page) > 0.01 * width * height, "the detections are painted, not just counted"
    counted = "top 5 classes" if model.endswith("-cls") else f"{len(body['data'])} detections"
    assert counted in (page.text_content("#summary") or "")

    shot = tmp_path / f"page-{model}.png"
    page.screenshot(path=str(shot), full_page=True)
    screenshot = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert screenshot is not None and screenshot.shape[0] >= 800 and screenshot.shape[1] >= 1200
    distinct = len(np.unique(screenshot.reshape(-1, 3), axis=0))
    assert distinct > 2000 and screenshot.std() > 30, f"the screenshot looks blank ({distinct} colours): {shot}"
    if keep := os.environ.get(
        "WEB_SCREENSHOT_DIR"
    ):  # e.g. for the README: WEB_SCREENSHOT_DIR=docs pytest -k page_draws
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)

    origin = gateway.url.rstrip("/")
    assert requested and all(url.startswith((origin + "/", "blob:")) for url in requested), requested


def test_page_keeps_the_key_in_local_storage(page: Any, gateway: Gateway) -> None:
    page.fill("#api-key", gateway.key)
    assert page.evaluate("() => Object.values(localStorage)").count(gateway.key) == 1
    page.reload()
    page.wait_for_selector("#model:not([disabled])")
    assert page.input_value("#api-key") == gateway.key


def test_page_snippets_reproduce_the_request(
    page: Any, gateway: Gateway, images: dict[str, Path], tmp_path: Path
) -> None:
    body = _run(page, gateway.key, "yolov8n", images["bus"], confidence="0.4", size="480")
    assert body["data"] and min(d["confidence"] for d in body["data"]) >= 0.4
    page.check("#show-key")
    curl = page.text_content("#curl") or ""
    python = page.text_content("#python") or ""
    for snippet in (curl, python):
        assert f"{gateway.url}/v1/predict/yolov8n" in snippet and gateway.key in snippet and "bus.jpg" in snippet
    page.uncheck("#show-key")
    assert gateway.key not in (page.text_content("#curl") or ""), "the secret is hidden unless asked for"

    shutil.copy(images["bus"], tmp_path / "bus.jpg")
    if shutil.which("curl"):
        out = subprocess.run(
            ["bash", "-c", curl.strip() + " -s"], cwd=tmp_path, capture_output=True, timeout=60, check=True
        )
        assert json.loads(out.stdout) == body
    code = python.replace("print(response.json())", "print(response.text)")  # JSON, not a Python repr
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60, check=True)
    assert json.loads(out.stdout) == body


DIALECTS = ("hub", "hub-xywhn", "hub-images", "predict", "platform")
PLATFORM_METADATA = {"imageCount", "functionTimeAlive", "functionTimeCall", "task", "version", "model", "classNames"}


def _dialect_rows(dialect: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a yolov8n answer on bus.jpg, after checking the answer has `dialect`'s shape (README, Dialects)."""
    if dialect in ("hub", "hub-xywhn"):
        assert answer["success"] is True, answer
        rows: list[dict[str, Any]] = answer["data"]
        keys = {"class", "name", "confidence", "width", "height", "xcenter", "ycenter"}
        assert all((set(r) == keys) == (dialect == "hub-xywhn") and ("box" in r) == (dialect == "hub") for r in rows)
    else:
        assert set(answer) == {"images", "metadata"}, answer
        rows = answer["images"][0]["results"]
        assert all(set(r["box"]) == {"x1", "y1", "x2", "y2"} for r in rows), rows
        meta = answer["metadata"]
        if dialect == "predict":
            assert meta["model"] == "https://hub.ultralytics.com/models/yolov8n", meta
        if dialect == "platform":
            assert set(meta) == PLATFORM_METADATA and meta["task"] == "detect", meta
    assert rows and min(r["confidence"] for r in rows) >= 0.4, "real detections, with the page's confidence"
    return rows


def _shell(snippet: str, cwd: Path) -> dict[str, Any]:
    out = subprocess.run(["bash", "-c", snippet.strip() + " -s"], cwd=cwd, capture_output=True, timeout=60, check=True)
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def _python(snippet: str, cwd: Path) -> dict[str, Any]:
    code = snippet.replace("print(response.json())", "print(response.text)")  # JSON, not a Python repr
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_page_snippets_speak_every_dialect(
    page: Any, gateway: Gateway, images: dict[str, Path], tmp_path: Path
) -> None:
    """For each dialect the selector offers, the curl, requests and official-client snippets the page shows, run as
    shown with the real key, get that dialect's answer with the same detections the page drew."""
    body = _run(page, gateway.key, "yolov8n", images["bus"], confidence="0.4", size="480")
    count = len(body["data"])
    assert count >= 3
    page.wait_for_selector('#dialect[data-key-dialect="none"]')  # the key carries none: the snippets speak hub
    assert page.input_value("#dialect") == "hub"
    page.check("#show-key")
    shutil.copy(images["bus"], tmp_path / "bus.jpg")
    where = {
        "hub": f'"{gateway.url}/v1/predict/yolov8n"',
        "hub-xywhn": f'"{gateway.url}/dialects/hub-xywhn/v1/predict/yolov8n"',
        "hub-images": f'"{gateway.url}/v1/predict/yolov8n"',
        "predict": f'"{gateway.url}/"',
        "platform": f'"{gateway.url}/api/models/owner/project/yolov8n/predict"',
    }
    for dialect in DIALECTS:
        page.select_option("#dialect", dialect)
        curl = page.text_content("#curl") or ""
        python = page.text_content("#python") or ""
        for snippet in (curl, python):
            assert where[dialect] in snippet and gateway.key in snippet, snippet
        header = f"Authorization: Bearer {gateway.key}" if dialect == "platform" else f"x-api-key: {gateway.key}"
        assert header in curl, curl
        for answer in (_shell(curl, tmp_path), _python(python, tmp_path)):
            assert len(_dialect_rows(dialect, answer)) == count, (dialect, answer)
            if dialect == "hub":
                assert answer == body
        client = page.text_content("#client") or ""
        assert page.is_visible("#client-box") == (dialect in ("hub", "hub-xywhn", "platform")), dialect
        if dialect in ("hub", "hub-xywhn", "platform"):  # hub-sdk, and the ultralytics-platform SDK
            answer = _python(client, tmp_path)
            assert len(_dialect_rows(dialect, answer)) == count, (dialect, answer)


def test_page_snippets_default_to_the_keys_dialect(
    page: Any, gateway: Gateway, images: dict[str, Path], tmp_path: Path
) -> None:
    """A key created for hub-xywhn: the page still draws (its own requests pin hub), the selector starts at the key's
    dialect and its snippets need no base path; picking hub adds the base path that pins it over the key's."""
    from gateway.keys.auth import KeyDraft, create_key

    key = create_key(gateway.keys_file, KeyDraft("web-xywhn", dialect="hub-xywhn"))[1]
    body = _run(page, key, "yolov8n", images["bus"], confidence="0.4")
    assert body["success"] is True and "box" in body["data"][0]
    page.wait_for_selector('#dialect[data-key-dialect="hub-xywhn"]')
    assert page.input_value("#dialect") == "hub-xywhn"
    page.check("#show-key")
    shutil.copy(images["bus"], tmp_path / "bus.jpg")
    curl = page.text_content("#curl") or ""
    assert f'"{gateway.url}/v1/predict/yolov8n"' in curl and key in curl, curl
    assert len(_dialect_rows("hub-xywhn", _shell(curl, tmp_path))) == len(body["data"])
    client = page.text_content("#client") or ""
    assert f'"ULTRALYTICS_HUB_API"] = "{gateway.url}"' in client, client
    assert len(_dialect_rows("hub-xywhn", _python(client, tmp_path))) == len(body["data"])

    page.select_option("#dialect", "hub")
    curl = page.text_content("#curl") or ""
    assert f'"{gateway.url}/dialects/hub/v1/predict/yolov8n"' in curl, curl
    assert _shell(curl, tmp_path) == body
    page.fill("#api-key", gateway.key)  # a key typed after a pick leaves the pick alone
    page.wait_for_selector('#dialect[data-key-dialect="none"]')
    assert page.input_value("#dialect") == "hub"
    assert f'"{gateway.url}/v1/predict/yolov8n"' in (page.text_content("#curl") or "")


def test_page_shows_api_errors_as_readable_messages(page: Any, gateway: Gateway, images: dict[str, Path]) -> None:
    page.fill("#api-key", "yk_nope_notavalidsecret")
    page.select_option("#model", "yolov8n")
    page.set_input_files("#file", str(images["bus"]))
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error") or ""
    assert "401" in message and "Invalid API key" in message, message
    assert page.get_attribute("#overlay", "data-detections") is None

    page.fill("#api-key", gateway.key)
    page.fill("#confidence", "7")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('400')")
    assert "confidence" in (page.text_content("#error") or "")


def test_page_falls_back_to_the_server_drawing_for_images_the_browser_cannot_show(
    page: Any, gateway: Gateway, images: dict[str, Path], tmp_path: Path
) -> None:
    tiff = tmp_path / "bus.tiff"  # the API decodes TIFF; Chromium does not display it
    cv2.imwrite(str(tiff), cv2.imread(str(images["bus"]), cv2.IMREAD_COLOR))
    body = _run(page, gateway.key, "yolov8n", tiff)
    assert page.get_attribute("#overlay", "data-detections") == str(len(body["data"])) and body["data"]
    assert "format=png" in (page.text_content("#status") or "")
    size = page.evaluate(
        "() => [document.getElementById('preview').naturalWidth, document.getElementById('preview').naturalHeight]"
    )
    assert size == [810, 1080], "the server's annotated PNG is shown in place of the input"


def test_page_shows_url_errors(page: Any, gateway: Gateway) -> None:
    page.fill("#api-key", gateway.key)
    page.fill("#url", "http://127.0.0.1:9/photo.jpg")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error") or ""
    assert "400" in message and "url" in message.lower(), message
    assert '-F "url=http://127.0.0.1:9/photo.jpg"' in (page.text_content("#curl") or "")


def test_page_manages_keys_and_shows_usage_for_an_admin_key(
    page: Any, gateway: Gateway, images: dict[str, Path]
) -> None:
    from gateway.keys.auth import KeyDraft, create_key

    page.fill("#api-key", gateway.key)  # not an admin key: told so, nothing listed
    page.click("#keys-load")
    page.wait_for_function("() => document.getElementById('keys-status').textContent.includes('403')")
    assert page.is_hidden("#keys-admin")

    _, admin = create_key(gateway.keys_file, KeyDraft("page-admin", admin=True))
    page.fill("#api-key", admin)
    page.click("#keys-load")
    page.wait_for_selector("#keys-admin:not([hidden])")
    assert gateway.key.split("_")[1] in (page.text_content("#keys-table") or "")

    page.fill("#new-name", "<b>from-page</b>")  # shown as text, never as HTML
    page.fill("#new-models", "yolov8n")
    page.click("#keys-create button[type=submit]")
    page.wait_for_selector("#keys-new:not([hidden])")
    new_key = page.text_content("#keys-new-key") or ""
    new_id = new_key.split("_")[1]
    assert new_key.startswith("yk_") and page.locator("#keys-table b").count() == 0
    assert "<b>from-page</b>" in (page.text_content(f"tr[data-key-id='{new_id}']") or "")

    r = gateway.predict("yolov8n", headers={"x-api-key": new_key}, files={"image": images["tiny"].read_bytes()})
    assert r.status_code == 200
    time.sleep(0.3)  # counted once the response is sent
    page.click(f"tr[data-key-id='{new_id}'] button:text('Usage')")
    page.wait_for_selector("#usage:not([hidden])")
    cells = page.locator("#usage-table tbody tr").first.locator("td").all_text_contents()
    assert cells[1:4] == ["yolov8n", "1", "1"], cells

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"tr[data-key-id='{new_id}'] button:text('Revoke')")
    page.wait_for_function(
        f"() => document.querySelector(\"tr[data-key-id='{new_id}']\").textContent.includes('revoked')"
    )
    r = gateway.predict("yolov8n", headers={"x-api-key": new_key}, files={"image": images["tiny"].read_bytes()})
    assert r.status_code == 401
