"""The try-it page with a video (frames streamed as NDJSON, a frame slider), and the page's layout at laptop and
desktop sizes, in Debian's Chromium (the fixtures of tests/test_web.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.test_video import write_video
from tests.test_web import _painted_pixels, browser, page  # noqa: F401 -- fixtures

pytestmark = pytest.mark.usefixtures("browser")


def _upload_video(page: Any, key: str, model: str, video: Path, **fields: str) -> list[dict[str, Any]]:  # noqa: F811
    """Upload `video` on the page and wait until its whole answer is in; the NDJSON lines the page shows."""
    page.fill("#api-key", key)
    page.select_option("#model", model)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.set_input_files("#file", str(video))
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('in all')")
    return [json.loads(line) for line in (page.text_content("#json") or "").splitlines()]


def test_page_plays_a_video_and_draws_each_frame(page: Any, gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    video = write_video(tmp_path / "bus.webm", "VP80", 8, (320, 240))  # VP8: Chromium plays it
    lines = _upload_video(page, gateway.key, "yolov8n", video, confidence="0.1", vid_stride="2")
    frames, end = lines[:-1], lines[-1]
    assert end["done"] is True and end["success"] is True and len(frames) == 4
    assert [f["frame"] for f in frames] == [1, 3, 5, 7] and page.is_hidden("#error")
    assert page.get_attribute("#frame", "max") == "3" and page.is_visible("#frames")
    assert page.is_visible("#video") and page.is_hidden("#preview")
    for i in (3, 0):
        page.fill("#frame", str(i))  # the slider
        page.wait_for_selector(f"#overlay[data-frame='{i}']")
        assert page.get_attribute("#overlay", "data-detections") == str(len(frames[i]["data"]))
        assert f"frame {frames[i]['frame']}" in (page.text_content("#frame-label") or "")
    size = page.evaluate("() => [document.getElementById('overlay').width, document.getElementById('overlay').height]")
    assert size == [320, 240], "the canvas is in video pixels"
    if frames[0]["data"]:
        assert _painted_pixels(page) > 0
    curl = page.text_content("#curl") or ""
    assert "--no-buffer" in curl and '-F "stream=true"' in curl and '-F "vid_stride=2"' in curl


def test_page_draws_a_video_the_browser_cannot_play(page: Any, gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    video = write_video(tmp_path / "zidane.avi", "MJPG", 3, (330, 186), "zidane.jpg")  # MJPEG in AVI: not in Chromium
    lines = _upload_video(page, gateway.key, "yolov8n-pose", video, confidence="0.1")
    assert len(lines) == 4 and lines[-1]["success"] is True
    page.wait_for_selector("#overlay[data-frame='0']")
    size = page.evaluate("() => [document.getElementById('overlay').width, document.getElementById('overlay').height]")
    assert size == [330, 186] and _painted_pixels(page) > 0.5 * 330 * 186  # the plain background and the results


def test_page_shows_a_refused_video_as_an_error(page: Any, gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    video = write_video(tmp_path / "many.mp4", "mp4v", 3, (64, 48))
    page.fill("#api-key", gateway.key)
    page.select_option("#model", "yolov8n")
    page.set_input_files("#file", str(video))
    page.fill("#vid_stride", "0")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('vid_stride')")
    assert "400" in (page.text_content("#error") or "")


@pytest.mark.parametrize("width,height", [(1280, 800), (1920, 1080)])
def test_page_fits_common_screen_sizes(
    browser: Any,  # noqa: F811
    gateway: Gateway,
    images: dict[str, Path],
    tmp_path: Path,
    width: int,
    height: int,
) -> None:
    """yolov8n-seg on zidane.jpg: nothing runs off the right edge (the Copy buttons are reachable) and the Response
    panel keeps each outline's coordinates on one line instead of one line per number."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    context.set_default_timeout(60_000)
    pg = context.new_page()
    try:
        pg.goto(f"{gateway.url}/")
        pg.wait_for_selector("#model:not([disabled])")
        pg.fill("#api-key", gateway.key)
        pg.select_option("#model", "yolov8n-seg")
        pg.set_input_files("#file", str(images["zidane"]))
        pg.wait_for_selector("#overlay[data-detections]")
        body = json.loads(pg.text_content("#json") or "")
        points = sum(len(d["segments"]["x"]) for d in body["data"])
        lines = (pg.text_content("#json") or "").count("\n") + 1
        assert points > 100 and lines < 20 * len(body["data"]) + 10, f"{lines} lines for {points} outline points"
        overflow = pg.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width} px window"
        for box in [pg.locator("button.copy").nth(i).bounding_box() for i in range(2)]:
            assert box is not None and box["x"] + box["width"] <= width, f"a Copy button is cut off: {box}"
        shot = tmp_path / f"page-{width}x{height}.png"
        pg.screenshot(path=str(shot))
        if keep := os.environ.get("WEB_SCREENSHOT_DIR"):
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
    finally:
        context.close()
