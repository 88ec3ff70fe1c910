"""Every answer the gateway gives to a prediction, in both response formats, shaped in one place.

`v1` is the HUB API (`{"success", "message", "data"}`); `v2` the newer Ultralytics API (`{"images", "metadata"}`).
The rows themselves are Ultralytics' `Results.summary()`, made by `postprocess.summary`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from gateway.preprocess import target_size
from gateway.schemas import PredictArgs, Style

from gateway.modelcard import UNTRAINED_WARNING, ModelInfo

if TYPE_CHECKING:
    from gateway.flow import Outcome


def _version() -> dict[str, str]:
    """What serves the answer, in the place of the Platform's `version` (which names its torch and Ultralytics: the
    gateway runs neither; the model's own versions are in `GET /v1/models/{id}`)."""
    try:
        gateway = importlib.metadata.version("yolo-triton")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        gateway = "unknown"
    return {"yolo-triton": gateway, "python": platform.python_version()}


VERSION = _version()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def server_timing(timings: dict[str, float]) -> str:
    """The `Server-Timing` header: each stage's milliseconds."""
    return ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())


# The header that carries a model's UNTRAINED_WARNING on every prediction, in both formats.
WARNING_HEADER = "X-Model-Warning"


def headers(info: ModelInfo, timings: dict[str, float]) -> dict[str, str]:
    """A successful prediction's headers: `Server-Timing`, and the warning for untrained models."""
    out = {"Server-Timing": server_timing(timings)}
    if info.untrained:
        out[WARNING_HEADER] = UNTRAINED_WARNING
    return out


def success(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"success": True, "message": "Inference complete.", "data": data}


def body(
    info: ModelInfo, args: PredictArgs, outcomes: list[Outcome], style: Style, started: float | None = None
) -> dict[str, Any]:
    """The JSON body for the outcomes of one request (at least one succeeded)."""
    if style == "v2":
        images = [_image_entry(o) for o in outcomes]
        answer = images_body(info.name, info.task, args, images, info.stride, started)
        if info.untrained:
            answer["warning"] = UNTRAINED_WARNING
        return answer
    if len(outcomes) == 1:
        return success(outcomes[0].rows or [])
    entries: list[dict[str, Any]] = [
        {"success": True, "message": "Inference complete.", "data": o.rows}
        if o.error is None
        else {"success": False, "message": o.error.message, "status": o.error.status, "data": []}
        for o in outcomes
    ]
    done = sum(o.error is None for o in outcomes)
    return {"success": True, "message": f"Inference complete for {done} of {len(outcomes)} images.", "data": entries}


def images_body(
    model: str,
    task: str,
    args: PredictArgs,
    images: list[dict[str, Any]],
    stride: int,
    started: float | None = None,
) -> dict[str, Any]:
    """The newer Ultralytics API's response: one entry per image, and the arguments used (`imgsz` as rounded up to
    the model's stride, the size the model saw). The Platform's own metadata fields come first: `imageCount`,
    `functionTimeCall` (seconds since the request started, when `started` is known) and `version`."""
    metadata: dict[str, Any] = {"imageCount": len(images)}
    if started is not None:
        metadata["functionTimeCall"] = round(time.perf_counter() - started, 6)
    metadata |= {
        "version": VERSION,
        "model": model,
        "task": task,
        "imgsz": target_size(args.size, stride),
        "conf": args.confidence,
        "iou": args.iou,
        "max_det": args.max_det,
        "classes": list(args.classes) if args.classes is not None else None,
        "agnostic": args.agnostic,
        "normalize": args.normalize,
        "decimals": args.decimals,
    }
    return {"images": images, "metadata": metadata}


def _image_entry(o: Outcome) -> dict[str, Any]:
    if o.error is not None:
        error = {"status": o.error.status, "message": o.error.message}
        return {"results": [], "shape": None, "speed": None, "error": error}
    speed = {k: round(v, 3) for k, v in o.speed.items()}
    return {"results": o.rows, "shape": list(o.shape or ()), "speed": speed}
