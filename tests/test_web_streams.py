"""The try-it page's Streams view in Debian's Chromium (the browser of tests/test_web.py) against a real gateway and a
real live source on loopback (ffmpeg's MJPEG stream of a clip cut from bus.jpg, tests/sources.py): a stream started
from the page has its frames' results drawn live, is listed, and is gone once stopped from the page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_video import write_video
from tests.test_web import browser, open_page  # noqa: F401 -- fixture
from tritonlocal import launcher

SIZE = (640, 480)  # the clip's frames: the canvas must be drawn at this size


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway that lets streams read sources on loopback (the URL guard refuses them by default)."""
    gateway = start_gateway(
        triton, tmp_path_factory.mktemp("web-streams-gw"), url_allow_hosts="127.0.0.1", stream_read_timeout_s="2"
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def key(gw: Gateway) -> str:
    from gateway.keys.auth import KeyDraft, create_key

    return create_key(gw.keys_file, KeyDraft("web-streams"))[1]  # a key of its own per test: its own streams


@pytest.fixture
def page(browser: Any, gw: Gateway) -> Iterator[Any]:  # noqa: F811
    """The page on `gw` (tests/test_web.py's `open_page`), once the Streams view lists the models."""
    with open_page(browser, gw.url) as pg:
        pg.wait_for_selector("#stream-model option[value='yolov8n']", state="attached")
        yield pg


@pytest.fixture(scope="module")
def bus_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sources.need("ffmpeg")
    return write_video(tmp_path_factory.mktemp("web-streams-clip") / "bus.mp4", "mp4v", 25, SIZE)


def _canvas(page: Any) -> dict[str, Any]:
    """The stream canvas's size, what it says it drew, its painted (non-background) pixels, and the rows listed
    beside it (read at once: the next frame repaints both)."""
    found: dict[str, Any] = page.evaluate(
        """() => {
          const c = document.getElementById('stream-canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let painted = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i] !== 0x3a || d[i + 1] !== 0x3f || d[i + 2] !== 0x4b) painted++;
          return {width: c.width, height: c.height, painted, detections: Number(c.dataset.detections || -1),
                  frame: c.dataset.frame, events: Number(c.dataset.events || 0),
                  rows: [...document.querySelectorAll('#stream-rows tbody tr')].map(
                    (r) => [...r.cells].map((td) => td.textContent))};
        }"""
    )
    return found


def test_page_starts_a_stream_draws_its_frames_live_and_stops_it(
    page: Any, gw: Gateway, key: str, bus_clip: Path
) -> None:
    served = sources.mjpeg(bus_clip)
    api = {"x-api-key": key}
    try:
        page.fill("#stream-fps", "4")
        page.check("#stream-track")
        id = _start(page, key, served.url)
        assert id.startswith("st_") and page.is_hidden("#stream-error")
        assert id in (page.text_content("#streams-table") or ""), "the new stream is listed"

        # several frames with detections drawn, one after another, while the source plays
        page.wait_for_function(
            """() => { const c = document.getElementById('stream-canvas');
                       return Number(c.dataset.detections) > 0 && Number(c.dataset.events) >= 3; }""",
            timeout=120_000,
        )
        drawn = _canvas(page)
        assert (drawn["width"], drawn["height"]) == SIZE, "the canvas is the frame's size"
        assert drawn["painted"] > 0.002 * SIZE[0] * SIZE[1], f"the results are painted, not just counted: {drawn}"
        assert len(drawn["rows"]) == min(drawn["detections"], 50)
        cells = drawn["rows"][0]
        assert cells[0] == drawn["frame"] and cells[1].isdigit() and cells[2] and 0 < float(cells[3]) <= 1, cells
        page.wait_for_selector("#stream-stats[data-state='running']")  # the record's state: written every second
        stats = page.text_content("#stream-stats") or ""
        assert "lag" in stats, stats
        assert f"{SIZE[0]}×{SIZE[1]}" in stats, stats
        if keep := os.environ.get("WEB_SCREENSHOT_DIR"):  # as tests/test_web.py: to look at the view
            Path(keep).mkdir(parents=True, exist_ok=True)
            page.locator("section.streams").screenshot(path=str(Path(keep) / "page-streams.png"))
        latest = requests.get(f"{gw.url}/v1/streams/{id}", headers=api, timeout=10).json()["data"]
        assert latest["frames_processed"] >= 1 and latest["track"] is True  # (the rates are written every second)

        page.click(f"tr[data-stream-id='{id}'] button:text('Stop')")
        page.wait_for_selector("#stream-stats[data-state='deleted']")
        page.wait_for_function(f"() => !document.querySelector(\"tr[data-stream-id='{id}']\")")
        assert page.is_hidden("#stream-error")
        assert requests.get(f"{gw.url}/v1/streams/{id}", headers=api, timeout=10).status_code == 404
        assert requests.get(f"{gw.url}/v1/streams", headers=api, timeout=10).json()["data"] == []
    finally:
        served.stop()
        for s in requests.get(f"{gw.url}/v1/streams", headers=api, timeout=10).json()["data"]:
            requests.delete(f"{gw.url}/v1/streams/{s['id']}", headers=api, timeout=10)  # none outlives the test


def _start(page: Any, key: str, source: str) -> str:
    """Start a stream of `source` from the page's Streams view; its id once the page follows it."""
    page.fill("#api-key", key)
    page.fill("#stream-source", source)
    page.select_option("#stream-model", "yolov8n")
    page.click("#stream-start")
    page.wait_for_selector("#stream-canvas[data-stream]")
    return str(page.get_attribute("#stream-canvas", "data-stream"))


def test_page_sees_a_stream_deleted_elsewhere_end(page: Any, gw: Gateway, key: str, bus_clip: Path) -> None:
    served = sources.mjpeg(bus_clip)
    try:
        id = _start(page, key, served.url)
        page.wait_for_function("() => Number(document.getElementById('stream-canvas').dataset.events) >= 1")
        r = requests.delete(f"{gw.url}/v1/streams/{id}", headers={"x-api-key": key}, timeout=10)
        assert r.status_code == 200
        page.wait_for_selector("#stream-stats[data-state='deleted']")  # the events' `end`, or the next poll's 404
        assert "deleted" in (page.text_content("#stream-stats") or "")
    finally:
        served.stop()


def test_page_shows_stream_errors_as_readable_messages(page: Any, gw: Gateway, key: str) -> None:
    page.fill("#api-key", "yk_nope_notavalidsecret")
    page.fill("#stream-source", "rtsp://127.0.0.1:8554/live")
    page.click("#stream-start")
    page.wait_for_selector("#stream-error:not([hidden])")
    message = page.text_content("#stream-error") or ""
    assert "401" in message and "Invalid API key" in message, message

    page.fill("#api-key", key)
    page.fill("#stream-source", "ftp://127.0.0.1/live")  # refused by the URL guard before any connection
    page.click("#stream-start")
    page.wait_for_function("() => document.getElementById('stream-error').textContent.includes('400')")
    assert "source" in (page.text_content("#stream-error") or "").lower()
    assert page.is_hidden("#stream-watch")

    page.click("#streams-load")
    page.wait_for_selector("#streams-table:not([hidden])")
    assert page.locator("#streams-table tbody tr").count() == 0
    assert "No stream" in (page.text_content("#streams-status") or "")
