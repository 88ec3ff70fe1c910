"""Video uploads: per-frame parity with Ultralytics' own video predictor, streaming, limits and hostile files.

Videos are written here with OpenCV's VideoWriter (moving crops of Ultralytics' test photos); the reference is
`YOLO(source.onnx).predict(video_path, vid_stride=...)`, which reads the file with the same loader logic.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from bench.parity import assert_matches
from tests.conftest import Gateway, start_gateway, stop_gateway

FPS = 25.0
CONF = 0.1


def write_video(path: Path, fourcc: str, frames: int, size: tuple[int, int], photo: str = "bus.jpg") -> Path:
    """`frames` crops of `size` (w, h) moving across an Ultralytics test photo, at 25 fps. fourcc "raw": uncompressed
    (the only codec here that keeps odd sizes: the others round to even ones)."""
    from ultralytics.utils import ASSETS

    image = cv2.imread(str(ASSETS / photo))
    w, h = size
    scale = max(w / image.shape[1], h / image.shape[0], 0.0) * 1.3
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale)
    span_x, span_y = image.shape[1] - w, image.shape[0] - h
    code = 0 if fourcc == "raw" else cv2.VideoWriter_fourcc(*fourcc)
    writer = cv2.VideoWriter(str(path), code, FPS, (w, h))
    assert writer.isOpened(), f"this OpenCV build can't write {fourcc} to {path.suffix}"
    for i in range(frames):
        x, y = span_x * i // max(frames - 1, 1), span_y * i // max(frames - 1, 1)
        writer.write(np.ascontiguousarray(image[y : y + h, x : x + w]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(out / "bus.mp4", "mp4v", 9, (250, 170)),
        "avi": write_video(out / "zidane.avi", "MJPG", 10, (330, 186), "zidane.jpg"),
        "webm": write_video(out / "bus.webm", "VP80", 8, (202, 282)),
        "mkv": write_video(out / "zidane.mkv", "MJPG", 4, (300, 170), "zidane.jpg"),
        "odd": write_video(out / "odd.avi", "raw", 5, (203, 141)),
    }


@pytest.fixture(scope="module")
def reference(repository: Path) -> Any:
    from ultralytics import YOLO

    models: dict[str, Any] = {}

    def predict(model: str, path: Path, stride: int, size: int) -> list[list[dict[str, Any]]]:
        if model not in models:
            models[model] = YOLO(str(repository / model / "source.onnx"))
        results = models[model].predict(str(path), vid_stride=stride, imgsz=size, conf=CONF, rect=True, verbose=False)
        return [r.summary() for r in results]

    return predict


def _wh(path: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(path))
    wh = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return wh


def _post(gw: Gateway, route: str, path: Path, name: str | None = None, **fields: Any) -> requests.Response:
    headers = {"x-api-key": gw.key}
    files = {"file" if route != "v1" else "image": (name or path.name, path.read_bytes())}
    url = (
        f"{gw.url}/v1/predict/{fields.pop('model')}"
        if route == "v1"
        else f"{gw.url}/api/models/{fields.pop('model')}/predict"
    )
    return requests.post(url, headers=headers, files=files, data=fields, timeout=300)


def _frames_match(
    frames: list[dict[str, Any]], want: list[list[dict[str, Any]]], stride: int, wh: tuple[int, int], key: str
) -> None:
    assert len(frames) == len(want), f"{len(frames)} frames, Ultralytics has {len(want)}"
    assert [f["frame"] for f in frames] == [(k + 1) * stride - 1 for k in range(len(want))]
    assert [f["time"] for f in frames] == [
        pytest.approx(((k + 1) * stride - 1) / FPS, abs=1e-6) for k in range(len(want))
    ]
    assert sum(len(w) for w in want) > 0, "no detections in any frame: this case would compare nothing"
    for f, w in zip(frames, want):
        if w:
            assert_matches(f[key], w, wh, normalize=False)
        else:
            assert f[key] == []


@pytest.mark.parametrize(
    "model,video,stride,size",
    [
        ("yolov8n", "mp4", 1, 320),
        ("yolov8n", "avi", 3, 256),
        ("yolov8n", "mkv", 1, 320),
        ("yolov8n", "odd", 2, 320),
        ("yolov8n-seg", "webm", 2, 320),
    ],
)
def test_video_parity_per_frame_with_ultralytics(
    gateway: Gateway, reference: Any, videos: dict[str, Path], model: str, video: str, stride: int, size: int
) -> None:
    path = videos[video]
    r = _post(gateway, "v1", path, model=model, vid_stride=stride, size=size, confidence=CONF, iou=0.7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    want = reference(model, path, stride, size)
    _frames_match(body["data"], want, stride, _wh(path), "data")
    assert (
        body["video"]["frames"] == len(want) and body["video"]["fps"] == FPS and body["video"]["vid_stride"] == stride
    )
    assert (body["video"]["width"], body["video"]["height"]) == _wh(path)


def test_video_v2_route_and_name_ignored(gateway: Gateway, reference: Any, videos: dict[str, Path]) -> None:
    """The newer API answers `images` entries with `frame` and `time`; a video named .png is still a video."""
    path = videos["avi"]
    r = _post(gateway, "v2", path, name="photo.png", model="yolov8n-pose", imgsz=320, conf=CONF, iou=0.7, vid_stride=2)
    assert r.status_code == 200, r.text
    body = r.json()
    want = reference("yolov8n-pose", path, 2, 320)
    _frames_match(body["images"], want, 2, _wh(path), "results")
    assert all(entry["shape"] == [_wh(path)[1], _wh(path)[0]] for entry in body["images"])
    assert body["metadata"]["video"]["container"] == "AVI" and body["metadata"]["task"] == "pose"


def test_video_stream_ndjson_matches_whole_answer(gateway: Gateway, videos: dict[str, Path]) -> None:
    path = videos["mp4"]
    whole = _post(gateway, "v1", path, model="yolov8n", confidence=CONF).json()
    r = _post(gateway, "v1", path, model="yolov8n", confidence=CONF, stream="true")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["success"] is True and lines[-1]["video"] == whole["video"]
    assert lines[:-1] == whole["data"]


# --- a gateway of its own: small limits, its own TMPDIR, memory and cleanup observed from outside ---


@pytest.fixture(scope="module")
def video_gateway(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    workdir = tmp_path_factory.mktemp("gateway-video")
    tmp = workdir / "tmp"
    tmp.mkdir()
    # a 1 MiB image limit sends every video here through the spooled (streamed) form path
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # the gateway's temporary files go where the tests can see them
    try:
        gw = start_gateway(
            triton, workdir, max_upload_bytes=str(2**20), max_video_bytes=str(30 * 2**20), max_video_frames="400",
            max_video_seconds="60",
        )  # fmt: skip
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    yield gw, tmp
    stop_gateway(gw)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames of 1280×720: about 830 MB if the gateway held every decoded frame."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", "mp4v", 300, (1280, 720))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _inflight(gw: Gateway) -> float:
    text = requests.get(f"{gw.url}/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("yolo_requests_in_flight ")))


def _inference_count(triton: Any, model: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_stream_first_frame_arrives_while_working_and_memory_stays_bounded(
    video_gateway: tuple[Gateway, Path], long_video: Path
) -> None:
    gw, tmp = video_gateway
    assert long_video.stat().st_size > 2**20  # the spooled path
    base = _rss(gw.process.pid)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(gw.process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(long_video, "rb") as f:
            r = requests.post(
                f"{gw.url}/v1/predict/yolov8n", headers={"x-api-key": gw.key}, files={"image": ("long.mp4", f)},
                data={"stream": "true", "size": "64", "confidence": "0.5"}, stream=True, timeout=300,
            )  # fmt: skip
        assert r.status_code == 200, r.text
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert first["frame"] == 0
        assert _inflight(gw) == 1  # the first frame is here while the server is still working on the video
        assert any(tmp.iterdir())  # the spooled video is in the gateway's TMPDIR while it works
        rest = [json.loads(line) for line in lines]
    finally:
        done.set()
        sampler.join()
    assert rest[-1]["done"] is True and rest[-1]["success"] is True, rest[-1]
    assert [f["frame"] for f in [first, *rest[:-1]]] == list(range(300))
    grown = peak[0] - base
    assert grown < 200 * 2**20, f"gateway RSS grew {grown / 2**20:.0f} MiB while streaming an 830 MB (decoded) video"
    assert _inflight(gw) == 0 and not any(tmp.iterdir())


def test_disconnect_mid_stream_frees_everything(
    video_gateway: tuple[Gateway, Path], long_video: Path, triton: Any
) -> None:
    gw, tmp = video_gateway
    before = _inference_count(triton, "yolov8n-seg")
    with open(long_video, "rb") as f:
        r = requests.post(
            f"{gw.url}/v1/predict/yolov8n-seg", headers={"x-api-key": gw.key}, files={"image": ("long.mp4", f)},
            data={"stream": "true", "size": "64"}, stream=True, timeout=300,
        )  # fmt: skip
    assert r.status_code == 200
    assert json.loads(next(r.iter_lines()))["frame"] == 0
    r.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_inflight(gw) != 0 or any(tmp.iterdir())):
        time.sleep(0.2)
    assert _inflight(gw) == 0, "the request's in-flight slot was not released"
    assert not list(tmp.iterdir()), "a temporary file was left behind"
    settled = _inference_count(triton, "yolov8n-seg")
    time.sleep(1.0)
    assert _inference_count(triton, "yolov8n-seg") == settled, "frames are still being inferred after the disconnect"
    assert settled - before < 300, "the whole video was processed although the client left"
    assert requests.get(f"{gw.url}/readyz", timeout=10).status_code == 200


# --- hostile and out-of-limit videos: each its 4xx, and the service keeps serving ---


def _patched(src: Path, dst: Path, edits: list[tuple[bytes, int, str, tuple[int, ...]]]) -> Path:
    """A copy of `src` with struct-packed values written at offsets after the first occurrence of each tag."""
    data = bytearray(src.read_bytes())
    for tag, offset, fmt, values in edits:
        at = data.find(tag)
        assert at >= 0, tag
        struct.pack_into(fmt, data, at + offset, *values)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, videos: dict[str, Path]) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hostile")
    avi = videos["avi"]
    raw = out / "raw.avi"
    writer = cv2.VideoWriter(str(raw), 0, FPS, (64, 48))  # uncompressed: the size comes from the header alone
    for i in range(3):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    zero = out / "zero.avi"
    cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48)).release()
    cases = {
        "truncated.avi": avi.read_bytes()[: avi.stat().st_size * 6 // 10],
        "truncated.mp4": videos["mp4"].read_bytes()[: videos["mp4"].stat().st_size // 2],
        "not-a-video.mp4": b"this is a text file, not a video\n" * 100,
        "zero.avi": zero.read_bytes(),
    }
    paths = {name: out / name for name in cases}
    for name, data in cases.items():
        paths[name].write_bytes(data)
    # avih: width/height at +40, total frames at +24; strf (BITMAPINFOHEADER): width/height at +12; strh length +40
    paths["huge-header.avi"] = _patched(
        raw, out / "huge.avi", [(b"avih", 40, "<II", (100_000, 100_000)), (b"strf", 12, "<ii", (100_000, 100_000))]
    )
    paths["big-frames.avi"] = _patched(
        raw, out / "big.avi", [(b"avih", 40, "<II", (15_000, 15_000)), (b"strf", 12, "<ii", (15_000, 15_000))]
    )
    paths["many-frames.avi"] = _patched(
        avi, out / "many.avi", [(b"avih", 24, "<I", (10**9,)), (b"strh", 40, "<I", (10**9,))]
    )
    return paths


@pytest.mark.parametrize(
    "name,status,words",
    [
        ("truncated.avi", 422, "broke off"),
        ("truncated.mp4", 422, "could not be opened"),
        ("not-a-video.mp4", 415, "not a supported image"),
        ("zero.avi", 422, "no frame"),
        ("huge-header.avi", None, ""),
        ("big-frames.avi", 413, "megapixels"),
        ("many-frames.avi", 413, "Trim the video"),
    ],
)
def test_hostile_video_refused_and_service_keeps_serving(
    gateway: Gateway, hostile: dict[str, Path], images: dict[str, Path], name: str, status: int | None, words: str
) -> None:
    r = _post(gateway, "v1", hostile[name], model="yolov8n")
    body = r.json()
    if status is None:  # whatever FFmpeg makes of a 100,000² header, the answer is a client error, never a crash
        assert 400 <= r.status_code < 500, r.text
    else:
        assert r.status_code == status, r.text
        assert words in body["message"], body["message"]
    assert body["success"] is False
    if name == "truncated.avi":  # what could be read comes with the error
        assert body["data"] and [f["frame"] for f in body["data"]] == list(range(len(body["data"])))
        assert body["video"]["frames"] == len(body["data"]) < body["video"]["frame_count"]
    ok = gateway.predict("yolov8n", files={"image": images["bus"].read_bytes()})
    assert ok.status_code == 200 and ok.json()["data"]


def test_video_argument_errors(gateway: Gateway, videos: dict[str, Path], images: dict[str, Path]) -> None:
    path = videos["mp4"]
    cases = [
        ({"vid_stride": "0"}, "vid_stride"),
        ({"vid_stride": "x"}, "vid_stride"),
        ({"stream": "maybe"}, "stream"),
        ({"format": "image"}, "JSON"),
    ]
    for fields, words in cases:
        r = _post(gateway, "v1", path, model="yolov8n", **fields)
        assert r.status_code == 400 and words in r.json()["message"], (fields, r.text)
    two = requests.post(
        f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": gateway.key},
        files=[("image", ("a.mp4", path.read_bytes())), ("image", ("b.jpg", images["bus"].read_bytes()))], timeout=60,
    )  # fmt: skip
    assert two.status_code == 400 and "only file" in two.json()["message"]
    r = gateway.predict("yolov8n", files={"image": images["bus"].read_bytes()}, data={"stream": "true"})
    assert r.status_code == 400 and "video" in r.json()["message"]


def test_video_limits_from_settings(
    video_gateway: tuple[Gateway, Path], tmp_path: Path, videos: dict[str, Path]
) -> None:
    gw, tmp = video_gateway
    many = write_video(tmp_path / "many.mp4", "mp4v", 401, (64, 48))  # 401 frames, the limit is 400
    r = _post(gw, "v1", many, model="yolov8n")
    assert r.status_code == 413 and "vid_stride" in r.json()["message"] and "400" in r.json()["message"]
    r = _post(gw, "v1", many, model="yolov8n", vid_stride=2, size=64)
    assert r.status_code == 200 and r.json()["video"]["frames"] == 200
    big = tmp_path / "big.avi"
    big.write_bytes(videos["avi"].read_bytes() + b"\0" * (31 * 2**20))  # past the 30 MiB video limit
    r = _post(gw, "v1", big, model="yolov8n")
    assert r.status_code == 413 and "video upload limit" in r.json()["message"]
    assert not list(tmp.iterdir())


def test_each_frame_costs_one_token(video_gateway: tuple[Gateway, Path], videos: dict[str, Path]) -> None:
    from gateway.auth import create_key

    gw, _ = video_gateway
    _, key = create_key(gw.keys_file, "slow", rate=2.0)

    def send() -> requests.Response:
        return requests.post(
            f"{gw.url}/v1/predict/yolov8n", headers={"x-api-key": key},
            files={"image": videos["avi"].read_bytes()}, data={"size": "64"}, timeout=120,
        )  # fmt: skip

    deadline = time.monotonic() + 30
    while (r := send()).status_code == 401 and time.monotonic() < deadline:  # the keys file is re-read periodically
        time.sleep(0.5)
    assert r.status_code == 200 and len(r.json()["data"]) == 10, r.text
    again = send()
    assert again.status_code == 429, "ten frames at 2 per second leave the key in debt for seconds"


# --- the Python client ---


def test_client_predict_video_whole_and_streamed(
    gateway: Gateway, videos: dict[str, Path], hostile: dict[str, Path]
) -> None:
    import anyio

    from yolo_triton_client import ApiError, AsyncClient, Client

    path = videos["webm"]
    raw = _post(gateway, "v2", path, model="yolov8n", conf=CONF, vid_stride=2).json()
    with Client(gateway.url, gateway.key) as client:
        whole = client.predict_video("yolov8n", path, vid_stride=2, confidence=CONF)
        streamed = list(client.predict_video("yolov8n", path, vid_stride=2, confidence=CONF, stream=True))
        frames = client.predict_video("yolov8n", hostile["truncated.avi"], stream=True)
        got = []
        with pytest.raises(ApiError) as broken:
            for frame in frames:
                got.append(frame)

    def timeless(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "speed"} for e in entries]

    assert timeless([f.raw for f in whole]) == timeless(raw["images"]) and whole.video == raw["metadata"]["video"]
    assert [(f.frame, f.time, f.rows) for f in streamed] == [(f.frame, f.time, f.rows) for f in whole]
    assert [f.frame for f in whole] == [1, 3, 5, 7] and whole.frames[1].time == pytest.approx(3 / FPS)
    assert sum(len(f) for f in whole) > 0 and all(f.shape == (282, 202) for f in whole)
    assert broken.value.status == 422 and got and "broke off" in str(broken.value)

    async def run() -> list[tuple[int, float | None, Any]]:
        async with AsyncClient(gateway.url, gateway.key) as aclient:
            it = await aclient.predict_video("yolov8n", path, vid_stride=2, confidence=CONF, stream=True)
            return [(f.frame, f.time, f.rows) async for f in it]

    assert anyio.run(run) == [(f.frame, f.time, f.rows) for f in whole]
