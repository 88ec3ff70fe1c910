"""Video jobs from a `url` (POST /v1/jobs with `url` instead of `file`) against the real Triton and a real gateway
over sockets, the video served by a local HTTP server on 127.0.0.1 (allowed with GATEWAY_URL_ALLOW_HOSTS): the
result is byte for byte the uploaded clip's; the job shows its download (stage, bytes) and a cancel stops it; a
404, an oversize file (declared, and streamed without a length), a refused host (at POST, and behind a redirect), a
page that is not a video and a server too slow each fail the job with the documented error, and its webhook is
told; the client submits a URL; with Redis, a download whose owner is killed is downloaded again by another
replica."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_jobs import ARGS, Jobs, _key, two_replicas
from tests.test_streams import Receiver, poll
from tests.test_video import write_video
from tritonlocal import launcher

LIMIT = 1 << 20  # GATEWAY_MAX_VIDEO_BYTES of the test gateway: 1 MiB
TIMEOUT_S = 4.0  # its GATEWAY_JOB_DOWNLOAD_TIMEOUT_S


class Server:
    """A loopback HTTP server for the jobs' videos: /clip.mp4 (the clip, with its length), /missing.mp4 (404),
    /big.mp4 (declares LIMIT + 1 bytes), /endless.mp4 (no length, more than LIMIT bytes), /page.html (a web page),
    /redirect.mp4 (302 to the clip through `localhost`, a host the gateway does not allow), /drip.mp4 (a byte every
    0.5 s), /held.mp4 (half the clip, then the rest once `release` is set)."""

    def __init__(self, clip: bytes) -> None:
        self.clip = clip
        self.release = threading.Event()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                try:
                    server.answer(self, self.path.split("?")[0])
                except (BrokenPipeError, ConnectionResetError):  # the gateway hung up: what the test wants
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, handler: http.server.BaseHTTPRequestHandler, path: str) -> None:
        def head(status: int, length: int | None, kind: str = "video/mp4", **extra: str) -> None:
            handler.send_response(status)
            handler.send_header("Content-Type", kind)
            if length is not None:
                handler.send_header("Content-Length", str(length))
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.end_headers()

        write = handler.wfile.write
        if path == "/clip.mp4":
            head(200, len(self.clip))
            write(self.clip)
        elif path == "/big.mp4":
            head(200, LIMIT + 1)
            write(self.clip)  # the gateway refuses on the declared length; it never reads this far
        elif path == "/endless.mp4":  # HTTP/1.0 style: the body ends when the connection closes
            head(200, None, Connection="close")
            handler.close_connection = True
            for _ in range(LIMIT // len(self.clip) + 2):
                write(self.clip)
        elif path == "/page.html":
            page = b"<!doctype html><title>clip</title><video src=clip.mp4></video>"
            head(200, len(page), "text/html")
            write(page)
        elif path == "/redirect.mp4":
            head(302, 0, Location=f"http://localhost:{self.port}/clip.mp4")
        elif path == "/drip.mp4":
            head(200, len(self.clip))
            for byte in self.clip[: int(TIMEOUT_S * 4)]:  # bounded: ends well after the gateway gave up
                write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.5)
        elif path == "/held.mp4":
            head(200, len(self.clip))
            half = len(self.clip) // 2
            write(self.clip[:half])
            handler.wfile.flush()
            self.release.wait(60)
            write(self.clip[half:])
        else:
            head(404, 0, "text/plain")

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("jobs-url-clips") / "bus.mp4", "mp4v", 9, (250, 170))


@pytest.fixture(scope="module")
def server(clip: Path) -> Iterator[Server]:
    assert 1000 < clip.stat().st_size < LIMIT
    found = Server(clip.read_bytes())
    yield found
    found.close()


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("jobs-url-gw")
    gateway = start_gateway(
        triton,
        folder,
        jobs_dir=str(folder / "jobs"),
        url_allow_hosts="127.0.0.1",
        max_video_bytes=str(LIMIT),
        job_download_timeout_s=str(TIMEOUT_S),
    )
    yield gateway
    stop_gateway(gateway)


def _submit_url(api: Jobs, url: str, **fields: Any) -> dict[str, Any]:
    r = api.call("POST", "/v1/jobs", data={**ARGS, "url": url, **fields}, timeout=60)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()["data"]
    assert job["state"] == "queued" and r.headers["location"] == job["status_url"]
    return job


def _jobs_files(gw: Gateway) -> list[str]:
    return sorted(p.name for p in (gw.log_path.parent / "jobs").iterdir())


def test_a_job_from_a_url_gives_the_uploaded_clips_result_byte_for_byte(
    gw: Gateway, server: Server, clip: Path
) -> None:
    api = _key(gw, "url-parity")
    r = api.submit(clip, **ARGS)
    assert r.status_code == 202, r.text
    uploaded = api.finished(r.json()["data"]["id"])
    job = _submit_url(api, server.url("/clip.mp4?token=secret"))
    assert job["url"] == server.url("/clip.mp4")  # shown without its query string (a signed URL's token)
    done = api.finished(job["id"])
    assert done["state"] == uploaded["state"] == "done" and done["error"] is None, done
    assert done["stage"] is None and done["url"] == server.url("/clip.mp4")
    size = clip.stat().st_size
    assert done["progress"]["downloaded_bytes"] == done["progress"]["download_bytes_total"] == size
    assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == 9
    assert uploaded["progress"]["downloaded_bytes"] is None
    results = [api.call("GET", f"/v1/jobs/{id}/result").content for id in (uploaded["id"], job["id"])]
    lines = [json.loads(line) for line in results[1].splitlines()]
    assert len(lines) == 10 and sum(len(line["data"]) for line in lines[:-1]) > 0  # frames with detections
    assert results[1] == results[0]
    poll("the downloaded video removed", lambda: not [n for n in _jobs_files(gw) if n.startswith(job["id"] + ".")
                                                         and not n.endswith(".ndjson")], 30)  # fmt: skip


def test_a_running_download_shows_its_stage_and_bytes_and_a_cancel_stops_it(gw: Gateway, server: Server) -> None:
    api = _key(gw, "url-stage")
    server.release.clear()
    job = _submit_url(api, server.url("/held.mp4"))
    half = len(server.clip) // 2
    seen = poll(
        "the job downloading",
        lambda: (j := api.job(job["id"]))["stage"] == "downloading" and j["progress"]["downloaded_bytes"] and j,
        30,
    )
    assert seen["state"] == "running" and seen["progress"]["download_bytes_total"] == len(server.clip)
    assert 0 < seen["progress"]["downloaded_bytes"] <= half and seen["progress"]["frames_done"] == 0
    assert any(name.endswith(".download.part") for name in _jobs_files(gw))  # streamed to disk as it arrives
    cancelled = api.call("DELETE", f"/v1/jobs/{job['id']}").json()["data"]
    assert cancelled["state"] == "cancelled" and cancelled["stage"] is None
    # stopped while the server sends nothing: the run looks for a cancel every second, not when bytes arrive
    poll("the download's part file removed", lambda: not any(job["id"] in n for n in _jobs_files(gw)), 30)
    assert api.job(job["id"])["state"] == "cancelled"
    server.release.set()

    server.release.clear()  # the same download let through: the job then analyses the video
    job = _submit_url(api, server.url("/held.mp4"))
    poll("the job downloading", lambda: api.job(job["id"])["stage"] == "downloading", 30)
    server.release.set()
    done = api.finished(job["id"])
    assert done["state"] == "done" and done["progress"]["frames_done"] == 9, done


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/missing.mp4", 502, "answered HTTP 404"),
        ("/big.mp4", 413, "larger than the 1 MiB video limit (GATEWAY_MAX_VIDEO_BYTES)"),
        ("/endless.mp4", 413, "larger than the 1 MiB video limit (GATEWAY_MAX_VIDEO_BYTES)"),
        ("/redirect.mp4", 400, "not allowed"),
        ("/page.html", 415, "not a video this gateway reads"),
        ("/drip.mp4", 502, f"not downloaded within {TIMEOUT_S:g} s (GATEWAY_JOB_DOWNLOAD_TIMEOUT_S)"),
    ],
)
def test_a_download_that_fails_fails_the_job_naming_the_url_and_the_fix(
    gw: Gateway, server: Server, path: str, status: int, says: str
) -> None:
    api = _key(gw, f"url-fails-{path.strip('/')}")
    clip_fetches = server.requests.count("/clip.mp4")
    receiver = Receiver()
    hook = receiver.start()
    try:
        started = time.monotonic()
        job = _submit_url(api, server.url(path), webhook=hook)
        failed = api.finished(job["id"], 60)
        took = time.monotonic() - started
        delivered = poll("the job's webhook delivered", lambda: receiver.got, 60)
    finally:
        receiver.stop()
    error = failed["error"] or ""
    assert failed["state"] == "failed" and failed["error_status"] == status, failed
    assert says in error and f"could not be downloaded from {server.url(path)}" in error, error
    assert failed["result"] and api.call("GET", failed["result"]).status_code == 404  # no frame: no result
    if path == "/endless.mp4":  # streamed up to the limit, and refused there: the bytes it got are shown
        assert LIMIT // 2 < failed["progress"]["downloaded_bytes"] <= LIMIT, failed
    if path == "/drip.mp4":  # gave up at the deadline, not before (and not minutes later)
        assert TIMEOUT_S <= took < TIMEOUT_S + 30, took
    if path == "/redirect.mp4":  # the redirect's target was refused before any connection to it
        assert "/redirect.mp4" in server.requests and server.requests.count("/clip.mp4") == clip_fetches
    body = json.loads(delivered[0][2])
    assert body["type"] == "job.failed" and body["job"]["id"] == job["id"] and body["job"]["error"] == error
    poll("the failed job's files removed", lambda: not any(job["id"] in n for n in _jobs_files(gw)), 30)


def test_a_url_is_checked_when_the_job_is_submitted(gw: Gateway, server: Server, clip: Path) -> None:
    api = _key(gw, "url-checked")
    before = list(server.requests)
    cases = [
        (dict(url="http://10.0.0.1/v.mp4"), 400, "not allowed"),  # refused before any connection (private address)
        (dict(url="http://169.254.169.254/latest"), 400, "not allowed"),
        (dict(url="file:///etc/passwd"), 400, "must start with one of http://, https://"),
        (dict(url="ftp://example.com/v.mp4"), 400, "must start with one of http://, https://"),
        (dict(url="http://user:pw@127.0.0.1/v.mp4"), 400, "user name or password"),
        (dict(url="http://127.0.0.1:22/v.mp4"), 400, "port 22"),
        (dict(url=server.url("/clip.mp4"), source=server.url("/clip.mp4")), 400, "'source' is not taken"),
        (dict(), 400, "'file' part"),
    ]
    for fields, status, says in cases:
        r = api.call("POST", "/v1/jobs", data={**ARGS, **fields}, timeout=60)
        body = r.json()
        assert r.status_code == status and body["success"] is False and says in body["message"], (fields, r.text)
    r = api.submit(clip, url=server.url("/clip.mp4"), **ARGS)  # both a file and a url
    assert r.status_code == 400 and "not both" in r.json()["message"], r.text
    assert server.requests == before  # nothing was fetched for a refused submission
    assert api.call("GET", "/v1/jobs").json()["data"] == []


def test_the_client_submits_a_url(gw: Gateway, server: Server) -> None:
    from yolo_triton_client import Client

    api = _key(gw, "url-client")
    with Client(api_key=api.key, base_url=gw.url) as client:
        job = client.jobs.submit("yolov8n", server.url("/clip.mp4"), size=320, confidence=ARGS["confidence"], iou=0.7)
        assert job.state == "queued" and job.raw["url"] == server.url("/clip.mp4")
        done = client.jobs.wait(job.id, timeout=120)
        assert done.state == "done" and done.frames_done == 9
        lines = client.jobs.result(job.id)
    assert len(lines) == 10 and lines[-1]["done"] is True and any(line["data"] for line in lines[:-1])


@pytest.fixture
def replicas(triton: launcher.TritonServer, tmp_path: Path) -> Iterator[tuple[list[Gateway], str, Path]]:
    with two_replicas(triton, tmp_path, url_allow_hosts="127.0.0.1") as found:
        yield found


@pytest.mark.load
def test_a_download_whose_owner_is_killed_is_downloaded_again_by_another_replica(
    replicas: tuple[list[Gateway], str, Path], server: Server, clip: Path
) -> None:
    """The owner SIGKILLed while the server holds the second half of the video: the other replica, once the lease
    lapsed, downloads it again from the start (a second request), and the result is the uploaded clip's."""
    gateways, key, folder = replicas
    apis = [Jobs(gw.url, key) for gw in gateways]
    server.release.clear()
    fetches = server.requests.count("/held.mp4")
    job = _submit_url(apis[0], server.url("/held.mp4"))
    seen = poll("the job downloading", lambda: (j := apis[1].job(job["id"]))["stage"] == "downloading"
                and j["progress"]["downloaded_bytes"] and j, 60)  # fmt: skip
    owner = next(i for i, gw in enumerate(gateways) if f"-{gw.process.pid}-" in seen["owner"])
    gateways[owner].process.kill()
    gateways[owner].process.wait(10)
    other = apis[1 - owner]
    taken = poll("the other replica downloading", lambda: (j := other.job(job["id"]))["runs"] == 2
                 and server.requests.count("/held.mp4") == fetches + 2 and j, 60)  # fmt: skip
    assert taken["stage"] == "downloading" and f"-{gateways[1 - owner].process.pid}-" in taken["owner"], taken
    server.release.set()
    done = other.finished(job["id"])
    assert done["state"] == "done" and done["progress"]["frames_done"] == 9, done
    assert done["progress"]["downloaded_bytes"] == len(server.clip)
    assert other.lines(job["id"]) == other.video_route(clip, **ARGS)  # the whole video, analysed once
    assert sorted(p.name for p in folder.iterdir()) == [f"{job['id']}.ndjson"]  # the dead run's part file too
