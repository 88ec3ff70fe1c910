"""A POST /v1/streams body, read and checked: JSON with `source` and `model`, the frame choice (`vid_stride` or
`fps`), `track`, an optional `webhook`, and the usual prediction arguments (checked later by `parse_args`, which
names them as sent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


from gateway.arguments import ALIASES
from gateway.errors import BadRequest
from gateway.streams import json_object

FPS_RANGE = (0.1, 120.0)
# The prediction arguments a stream takes (`parse_args` checks their values); the rest of ARGUMENTS is about an
# upload's answer (url, source, format, stream) and has no meaning here.
PREDICTION = (
    *("size", "confidence", "iou", "normalize", "max_det", "classes", "agnostic", "vid_stride", "decimals"),
    "tracker",  # bytetrack or botsort, as on videos (gateway/predict/tracked.py)
)
OWN = ("source", "model", "fps", "track", "webhook")
HINT = 'Send JSON like {"source": "rtsp://camera.example/live", "model": "yolov8n", "fps": 5, "track": true}.'


@dataclass(frozen=True)
class StreamRequest:
    source: str
    model: str
    fields: dict[str, str]  # the prediction arguments as strings (what a form would send)
    fps: float = 0.0  # 0: every vid_stride-th frame instead
    track: bool = False  # as sent (`tracker` alone implies tracking too: `parse_args` decides)
    webhook: str = ""


def _text(value: Any) -> str:
    """A JSON value as a form would send it (lists of class ids as "0,2")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # JSON's 46.0 is the integer 46 (JSON Schema's too): "46.0" would be no integer
    return str(value)


def parse(raw: bytes) -> StreamRequest:
    """The request, or BadRequest naming the field."""
    body = json_object(raw, HINT)
    known = set(PREDICTION) | set(OWN) | {a for a, name in ALIASES.items() if name in PREDICTION}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"Unknown field '{str(unknown[0])[:32]}'. Streams take: {', '.join(sorted(known))}.")
    source, model = body.get("source"), body.get("model")
    if not isinstance(source, str) or not source.strip():
        raise BadRequest(f"Missing 'source': the stream's rtsp://, rtmp:// or http(s):// URL. {HINT}")
    if not isinstance(model, str) or not 0 < len(model) <= 64:
        raise BadRequest(f"Missing 'model': the model id to run on each frame (GET /v1/models lists them). {HINT}")
    fps = body.get("fps")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps):
            raise BadRequest(f"Invalid 'fps': a number of frames per second from {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g}.")
        if not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
            raise BadRequest(f"Invalid 'fps' value {fps}: valid range is {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g}.")
        if body.get("vid_stride") is not None:
            raise BadRequest("Send one of 'fps' (frames analysed per second) and 'vid_stride' (every n-th frame).")
    track = body.get("track", False)
    if not isinstance(track, bool):
        raise BadRequest("'track' must be true or false.")
    webhook = body.get("webhook") or ""
    if not isinstance(webhook, str):
        raise BadRequest("'webhook' must be an http(s):// URL.")
    fields = {name: _text(value) for name, value in body.items() if name not in OWN and value is not None}
    if "track" in body:  # `parse_args` reads it as a video's: `tracker` alone implies it, and it lowers the confidence
        fields["track"] = _text(track)
    return StreamRequest(source.strip(), model, fields, float(fps or 0), track, webhook.strip())
