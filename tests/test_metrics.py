"""GET /metrics: Prometheus exposition whose counters move with traffic, with bounded labels and no secrets."""

from __future__ import annotations

import re
from pathlib import Path

import requests

from tests.conftest import ALL_MODELS, TRAINED, Gateway


def _scrape(gw: Gateway) -> str:
    r = requests.get(f"{gw.url}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counters_and_histograms_move_after_requests(gateway: Gateway, images: dict[str, Path]) -> None:
    before = _scrape(gateway)
    ok = gateway.predict("yolov8n-pose", files={"image": images["bus"].read_bytes()})
    bad = gateway.predict("yolov8n-pose", files={"image": b"not an image"})
    unauth = gateway.predict("yolov8n-pose", headers={}, files={"image": images["tiny"].read_bytes()})
    assert (ok.status_code, bad.status_code, unauth.status_code) == (200, 415, 401)
    after = _scrape(gateway)
    assert (
        _value(after, "yolo_requests_total", model="yolov8n-pose", task="pose", status="200")
        == _value(before, "yolo_requests_total", model="yolov8n-pose", task="pose", status="200") + 1
    )
    assert (
        _value(after, "yolo_rejections_total", reason="bad_input")
        >= _value(before, "yolo_rejections_total", reason="bad_input") + 1
    )
    assert (
        _value(after, "yolo_rejections_total", reason="auth")
        >= _value(before, "yolo_rejections_total", reason="auth") + 1
    )
    for stage in ("decode", "letterbox", "triton", "postprocess"):
        assert _value(after, "yolo_stage_duration_seconds_count", stage=stage) > _value(
            before, "yolo_stage_duration_seconds_count", stage=stage
        )
    assert _value(after, "yolo_request_duration_seconds_count", model="yolov8n-pose", task="pose") >= 1
    assert _value(after, "yolo_request_body_bytes_sum") > _value(before, "yolo_request_body_bytes_sum")
    assert "yolo_requests_in_flight" in after and "process_resident_memory_bytes" in after


def test_labels_are_bounded_and_hold_no_secrets(gateway: Gateway, images: dict[str, Path]) -> None:
    for i in range(3):
        gateway.predict(f"random-model-{i}", files={"image": images["tiny"].read_bytes()})
    text = _scrape(gateway)
    assert "random-model" not in text
    assert _value(text, "yolo_requests_total", model="other", status="404") >= 3
    assert gateway.key not in text and gateway.key.split("_", 2)[2] not in text
    models = set(re.findall(r'model="([^"]+)"', text))
    assert models <= {*ALL_MODELS, *TRAINED, "other"}
