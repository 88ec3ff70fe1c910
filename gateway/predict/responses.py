"""Every answer the gateway gives to a prediction, images and videos, in both response formats, shaped in one place.

`hub` is the HUB API (`{"success", "message", "data"}`); `platform` the newer Ultralytics API (`{"images",
"metadata"}`). The rows themselves are Ultralytics' `Results.summary()`, made by `postprocess.summary`. The flows
(images.py and video.py in this package) produce the outcomes; this module only shapes them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.arguments import PredictArgs, Style
from gateway.errors import GatewayError, envelope
from gateway.modelcard import UNTRAINED_WARNING, ModelInfo
from gateway.vision.preprocess import target_size
from gateway.vision.videoreader import Reader

DONE = "Inference complete."
# The header that carries a model's UNTRAINED_WARNING on every prediction, in both formats.
WARNING_HEADER = "X-Model-Warning"


@dataclass
class Outcome:
    """One image's result: the summary rows and its shape, or the error that stopped it."""

    rows: list[dict[str, Any]] | None = None
    shape: tuple[int, int] | None = None
    image: NDArray[np.uint8] | None = None  # the decoded image, kept only when an annotated image is asked for
    error: GatewayError | None = None
    speed: dict[str, float] = field(default_factory=dict)


@dataclass
class FrameOutcome:
    """One analysed video frame's result: its index in the video, its time (s; None: fps unknown), its rows."""

    index: int
    time: float | None
    rows: list[dict[str, Any]]
    shape: tuple[int, int]
    speed: dict[str, float]


def _version() -> dict[str, str]:
    """What serves the answer, in the place of the Platform's `version` (which names its torch and Ultralytics: the
    gateway runs neither; the model's own versions are in `GET /v1/models/{id}`)."""
    try:
        gateway = importlib.metadata.version("yolo-triton")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        gateway = "unknown"
    return {"yolo-triton": gateway, "python": platform.python_version()}


VERSION = _version()


def server_timing(timings: dict[str, float]) -> str:
    """The `Server-Timing` header: each stage's milliseconds."""
    return ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())


def headers(info: ModelInfo, timings: dict[str, float]) -> dict[str, str]:
    """A successful prediction's headers: `Server-Timing`, and the warning for untrained models."""
    out = {"Server-Timing": server_timing(timings)}
    if info.untrained:
        out[WARNING_HEADER] = UNTRAINED_WARNING
    return out


def body(
    info: ModelInfo, args: PredictArgs, outcomes: list[Outcome], style: Style, started: float | None = None
) -> dict[str, Any]:
    """The JSON body for the outcomes of one request (at least one succeeded)."""
    if style == "platform":
        answer = images_body(info, args, [_image_entry(o) for o in outcomes], started)
        if info.untrained:
            answer["warning"] = UNTRAINED_WARNING
        return answer
    if len(outcomes) == 1:
        return envelope(DONE, outcomes[0].rows or [])
    entries = [
        envelope(DONE, o.rows)
        if o.error is None
        else {"success": False, "message": o.error.message, "status": o.error.status, "data": []}
        for o in outcomes
    ]
    done = sum(o.error is None for o in outcomes)
    return envelope(f"Inference complete for {done} of {len(outcomes)} images.", entries)


def images_body(
    info: ModelInfo, args: PredictArgs, images: list[dict[str, Any]], started: float | None = None
) -> dict[str, Any]:
    """The newer Ultralytics API's response: one entry per image, and the arguments used (`imgsz` as rounded up to
    the model's stride, the size the model saw). The Platform's own metadata fields come first: `imageCount`,
    `functionTimeCall` (seconds since the request started, when `started` is known) and `version`."""
    metadata: dict[str, Any] = {"imageCount": len(images)}
    if started is not None:
        metadata["functionTimeCall"] = round(time.perf_counter() - started, 6)
    metadata |= {
        "version": VERSION,
        "model": info.name,
        "task": info.task,
        "imgsz": target_size(args.size, info.stride),
        "conf": args.confidence,
        "iou": args.iou,
        "max_det": args.max_det,
        "classes": list(args.classes) if args.classes is not None else None,
        "agnostic": args.agnostic,
        "normalize": args.normalize,
        "decimals": args.decimals,
    }
    if args.track:  # the tracking arguments, when tracking (gateway/predict/tracked.py)
        metadata |= {"tracker": args.tracker, **({"sequence": args.sequence} if args.sequence else {})}
    return {"images": images, "metadata": metadata}


def _image_entry(o: Outcome) -> dict[str, Any]:
    if o.error is not None:
        error = {"status": o.error.status, "message": o.error.message}
        return {"results": [], "shape": None, "speed": None, "error": error}
    return {"results": o.rows, "shape": list(o.shape or ()), "speed": _speed(o.speed)}


def _speed(speed: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in speed.items()}


def frame_entry(o: FrameOutcome, style: Style) -> dict[str, Any]:
    """One frame's entry: hub `{"frame", "time", "data"}`; platform an `images` entry with `frame` and `time`."""
    if style == "hub":
        return {"frame": o.index, "time": o.time, "data": o.rows}
    return {"frame": o.index, "time": o.time, "results": o.rows, "shape": list(o.shape), "speed": _speed(o.speed)}


def _video(reader: Reader) -> dict[str, Any]:
    return {**reader.meta.public(), "frames": reader.analysed}


def video_body(
    info: ModelInfo,
    args: PredictArgs,
    style: Style,
    entries: list[dict[str, Any]],
    reader: Reader,
    error: GatewayError | None,
    started: float | None = None,
) -> dict[str, Any]:
    """The whole answer to a video: hub `{"success", "message", "data": frames, "video"}`; platform `{"images":
    frames, "metadata"}` with `metadata.video`. A video that broke off gets `"success": false` and the error's
    message, frames kept."""
    message = error.message if error else f"Inference complete for {len(entries)} frame(s)."
    if style == "hub":
        return {**envelope(message, entries, error is None), "video": _video(reader)}
    body = images_body(info, args, entries, started)
    body["metadata"]["video"] = _video(reader)
    if error is not None:
        body = {"success": False, "message": message, **body}
    return body


def end_line(
    info: ModelInfo, args: PredictArgs, style: Style, reader: Reader, error: GatewayError | None
) -> dict[str, Any]:
    """A streamed video's last line: `done`, and whether the video was read whole (`success`) or the error that ended
    it."""
    line: dict[str, Any] = {"done": True, "success": error is None}
    if error is not None:
        line["status"] = error.status
    line["message"] = error.message if error else f"Inference complete for {reader.analysed} frame(s)."
    if style == "hub":
        line["video"] = _video(reader)
    else:
        line["metadata"] = {
            **images_body(info, args, [])["metadata"],
            "imageCount": reader.analysed,
            "video": _video(reader),
        }
    return line
