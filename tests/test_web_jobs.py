"""The try-it page's Jobs view in Debian's Chromium (the browser of tests/test_web.py) against a real gateway and the
real Triton: a video submitted from the page is listed, its progress followed to done, its result downloaded (with
the key in a header, never in a URL) and summarised; a job from a URL shows its download, then is done; a long job
is cancelled, then deleted; a bad key reads 401."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_jobs_url import Server
from tests.test_video import write_video
from tests.test_web import browser, open_page  # noqa: F401 -- fixture
from tritonlocal import launcher

FRAMES = 12  # the short clip's


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("web-jobs-gw")
    gateway = start_gateway(triton, folder, jobs_dir=str(folder / "jobs"), url_allow_hosts="127.0.0.1")
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def key(gw: Gateway) -> str:
    from gateway.keys.auth import KeyDraft, create_key

    return create_key(gw.keys_file, KeyDraft("web-jobs"))[1]  # a key of its own per test: its own jobs


@pytest.fixture
def page(browser: Any, gw: Gateway) -> Iterator[Any]:  # noqa: F811
    """The page on `gw` (tests/test_web.py's `open_page`), once the Jobs view lists the models."""
    with open_page(browser, gw.url) as pg:
        pg.wait_for_selector("#job-model option[value='yolov8n']", state="attached")
        yield pg


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("web-jobs-clips")
    return {
        "short": write_video(out / "bus.mp4", "mp4v", FRAMES, (320, 240)),
        "long": write_video(out / "zidane-1200.avi", "MJPG", 1200, (320, 184), "zidane.jpg"),
    }


def _submit(page: Any, key: str, clip: Path) -> str:
    """Submit `clip` as a job from the page's Jobs view (yolov8n at 320); its id once the page lists it."""
    page.fill("#api-key", key)
    page.set_input_files("#job-file", str(clip))
    page.select_option("#job-model", "yolov8n")
    page.fill("#job-size", "320")
    page.click("#job-submit")
    page.wait_for_selector("#jobs-table tbody tr[data-job-id]")
    return str(page.get_attribute("#jobs-table tbody tr[data-job-id]", "data-job-id"))


def _states_seen(page: Any) -> None:
    """Record every state the jobs' rows take (window.seen: job id -> states in order), to see the polling move."""
    page.evaluate(
        """() => {
          window.seen = {};
          const note = (tr) => { (window.seen[tr.dataset.jobId] ||= []).push(tr.dataset.state); };
          new MutationObserver((changes) => {
            for (const c of changes) {
              if (c.type === 'attributes' && c.target.dataset.jobId) note(c.target);
              for (const n of c.addedNodes || []) if (n.dataset && n.dataset.jobId) note(n);
            }
          }).observe(document.getElementById('jobs-table'),
                     {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
        }"""
    )


def test_page_submits_a_job_follows_it_to_done_and_downloads_its_result(
    page: Any, gw: Gateway, key: str, clips: dict[str, Path]
) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    _states_seen(page)
    id = _submit(page, key, clips["short"])
    assert id.startswith("job_") and page.is_hidden("#job-error")
    row = f"#jobs-table tr[data-job-id='{id}']"
    page.wait_for_selector(f"{row}[data-state='done']", timeout=120_000)
    seen = page.evaluate(f"() => window.seen['{id}']")
    assert seen[0] == "queued" and seen[-1] == "done", seen  # listed as POST answered, then polled to done
    assert page.get_attribute(f"{row} progress", "value") == "100"
    assert f"{FRAMES} / {FRAMES} frames" in (page.text_content(row) or "")
    assert f"Job {id} done" in (page.text_content("#jobs-status") or "")

    with page.expect_download() as info:
        page.click(f"{row} button:text('Download result')")
    download = info.value
    assert download.suggested_filename == f"{id}.ndjson"
    lines = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    frames = [line for line in lines if "frame" in line]
    detections = sum(len(line["data"]) for line in frames)
    assert len(frames) == FRAMES and detections > 0, lines  # not an empty result
    assert lines[-1]["done"] is True and lines[-1]["success"] is True, lines[-1]
    served = requests.get(f"{gw.url}/v1/jobs/{id}/result", headers={"x-api-key": key}, timeout=30)
    assert Path(download.path()).read_bytes() == served.content, "the file saved is the API's result"

    page.wait_for_selector(f"#job-summary[data-job='{id}']")
    summary = page.text_content("#job-summary") or ""
    assert f"{FRAMES} frame(s)" in summary and f"{detections} detection(s)" in summary, summary
    assert page.get_attribute("#job-summary", "data-detections") == str(detections)
    assert not [u for u in urls if key in u], "the key never goes into a URL"
    if keep := os.environ.get("WEB_SCREENSHOT_DIR"):  # as tests/test_web.py: to look at the view
        Path(keep).mkdir(parents=True, exist_ok=True)
        page.locator("section.jobs").screenshot(path=str(Path(keep) / "page-jobs.png"))

    page.click(f"{row} button:text('Delete')")
    page.wait_for_function(f"() => !document.querySelector(\"#jobs-table tr[data-job-id='{id}']\")")
    assert requests.get(f"{gw.url}/v1/jobs/{id}", headers={"x-api-key": key}, timeout=10).status_code == 404


def test_page_submits_a_url_and_shows_its_download(page: Any, gw: Gateway, key: str, clips: dict[str, Path]) -> None:
    server = Server(clips["short"].read_bytes())  # /held.mp4: half the clip, the rest once released
    try:
        page.fill("#api-key", key)
        page.fill("#job-url", server.url("/held.mp4"))
        page.select_option("#job-model", "yolov8n")
        page.fill("#job-size", "320")
        page.click("#job-submit")
        row = "#jobs-table tbody tr[data-job-id]"
        page.wait_for_selector(row)
        page.wait_for_function(  # the bytes so far, of the length the server declared
            f"""() => /downloading [0-9.]+ \\/ [0-9.]+ MiB/.test(document.querySelector("{row}").textContent)""",
            timeout=60_000,
        )
        server.release.set()
        page.wait_for_selector(f"{row}[data-state='done']", timeout=120_000)
        assert f"{FRAMES} / {FRAMES} frames" in (page.text_content(row) or "")
        assert page.is_hidden("#job-error") and server.requests == ["/held.mp4"]
    finally:
        server.close()


def test_page_cancels_a_long_job(page: Any, gw: Gateway, key: str, clips: dict[str, Path]) -> None:
    api = {"x-api-key": key}
    id = _submit(page, key, clips["long"])
    row = f"#jobs-table tr[data-job-id='{id}']"
    try:
        page.wait_for_function(  # running, and some frames done: the bar moves
            f"""() => {{ const tr = document.querySelector("{row}");
                        return tr && tr.dataset.state === 'running'
                               && Number(tr.querySelector('progress').value) > 0; }}""",
            timeout=120_000,
        )
        page.click(f"{row} button:text('Cancel')")
        page.wait_for_selector(f"{row}[data-state='cancelled']")
        assert "cancelled" in (page.text_content("#jobs-status") or "").lower()
        job = requests.get(f"{gw.url}/v1/jobs/{id}", headers=api, timeout=10).json()["data"]
        assert job["state"] == "cancelled" and job["progress"]["frames_done"] < 1200, job
        assert page.locator(f"{row} button:text('Download result')").count() == 0

        page.click("#jobs-load")  # listed again from GET /v1/jobs: still there, cancelled
        page.wait_for_selector(f"{row}[data-state='cancelled']")
        page.click(f"{row} button:text('Delete')")
        page.wait_for_function(f'() => !document.querySelector("{row}")')
        assert requests.get(f"{gw.url}/v1/jobs", headers=api, timeout=10).json()["data"] == []
        assert page.is_hidden("#job-error")
    finally:
        for j in requests.get(f"{gw.url}/v1/jobs", headers=api, timeout=10).json()["data"]:
            requests.delete(f"{gw.url}/v1/jobs/{j['id']}", headers=api, timeout=10)  # none outlives the test


def test_page_shows_job_errors_as_readable_messages(page: Any, key: str, clips: dict[str, Path]) -> None:
    page.fill("#api-key", "yk_nope_notavalidsecret")
    page.set_input_files("#job-file", str(clips["short"]))
    page.click("#job-submit")
    page.wait_for_selector("#job-error:not([hidden])")
    message = page.text_content("#job-error") or ""
    assert "401" in message and "Invalid API key" in message, message
    assert page.is_hidden("#jobs-table")

    page.fill("#api-key", key)
    page.set_input_files("#job-file", {"name": "clip.mp4", "mimeType": "video/mp4", "buffer": b"not a video at all"})
    page.click("#job-submit")
    page.wait_for_function("() => document.getElementById('job-error').textContent.includes('POST /v1/jobs: 4')")
    message = page.text_content("#job-error") or ""
    assert "video" in message.lower(), message  # checked before the job is queued, as the video route checks it
    assert page.is_hidden("#jobs-table")

    page.click("#jobs-load")
    page.wait_for_selector("#jobs-table:not([hidden])")
    assert page.locator("#jobs-table tbody tr").count() == 0
    assert "No job" in (page.text_content("#jobs-status") or "")
