"""The dialects that answer `{"images": [...], "metadata": {...}}`: the HUB v1 URL with the newer body (`hub-images`),
predict.ultralytics.com (`predict`, shared and dedicated) and the Ultralytics Platform (`platform`).

Each `images` entry is `{results, shape [h, w], speed (ms)}`, the results being `Results.summary()` rows in pixels
(5 decimals unless asked otherwise). `metadata` holds what each dialect documents, and nothing else unless the
request asks for the gateway's own fields with `details=true`: the arguments used, the gateway's version, the
untrained-weights warning, and for a video `metadata.video` and each frame's `frame` and `time` (the Platform's
contract closes these objects against other keys). The Platform also differs in its errors: `{"error": ...}`, a
non-image is a 400, and a 429 says `retryAfter` and `resetAt` (ISO 8601, as its X-RateLimit-Reset).
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any

from gateway.arguments import IOU_DEFAULT
from gateway.dialects.base import (
    Call,
    Dialect,
    FrameOutcome,
    Outcome,
    alive_s,
    iso8601,
    reset_after_s,
    retry_after_s,
    speed_ms,
    versions,
)
from gateway.errors import GatewayError, TooManyRequests
from gateway.modelcard import UNTRAINED_WARNING
from gateway.vision.preprocess import target_size


def _gateway_version() -> dict[str, str]:
    """What serves the answer (in `details`): this gateway's version and Python."""
    try:
        gateway = importlib.metadata.version("yolo-triton")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        gateway = "unknown"
    return {"yolo-triton": gateway, "python": platform.python_version()}


GATEWAY = _gateway_version()


class Images(Dialect):
    """The `{images, metadata}` answer; subclasses say what their metadata documents (`documented`). Their docs give
    imgsz 640 as the default for every model (a classifier exported at 224 too), where /v1 takes the model's own."""

    size = 640

    def documented(self, call: Call, count: int) -> dict[str, Any]:
        """The metadata this dialect's documentation shows (predict.ultralytics.com's, by default)."""
        return {
            "functionTimeAlive": alive_s(),
            "functionTimeCall": call.seconds(),
            "imageCount": count,
            "model": call.model or call.info.name,
            "version": versions(call.info),
        }

    def metadata(self, call: Call, count: int) -> dict[str, Any]:
        meta = self.documented(call, count)
        if call.args.details:
            args, info = call.args, call.info
            meta |= {
                "gateway": GATEWAY,
                "task": info.task,
                "imgsz": target_size(args.size, info.stride),  # the size the model saw: rounded up to the stride
                "conf": args.confidence,
                "iou": args.iou,
                "max_det": args.max_det,
                "classes": list(args.classes) if args.classes is not None else None,
                "agnostic": args.agnostic,
                "normalize": args.normalize,
                "decimals": args.decimals,
            }
        if call.args.track:  # asked for: the tracking arguments (gateway/predict/tracked.py)
            meta |= {"tracker": call.args.tracker, **({"sequence": call.args.sequence} if call.args.sequence else {})}
        return meta

    def _with_warning(self, call: Call, body: dict[str, Any]) -> dict[str, Any]:
        if call.args.details and call.info.untrained:
            body["warning"] = UNTRAINED_WARNING
        return body

    def answer(self, call: Call, outcomes: list[Outcome]) -> dict[str, Any]:
        images = [self._entry(call, o) for o in outcomes]
        return self._with_warning(call, {"images": images, "metadata": self.metadata(call, len(images))})

    def _entry(self, call: Call, o: Outcome) -> dict[str, Any]:
        if o.error is not None:  # one image of several failed: the others are answered (a gateway extension)
            error = {"status": self.status(o.error), "message": o.error.message}
            return {"results": [], "shape": None, "speed": None, "error": error}
        return {"results": self.rows(call, o.rows or []), "shape": list(o.shape or ()), "speed": speed_ms(o.speed)}

    def frame(self, call: Call, o: FrameOutcome) -> dict[str, Any]:
        entry = {"results": self.rows(call, o.rows), "shape": list(o.shape), "speed": speed_ms(o.speed)}
        if call.args.details or call.args.stream:  # which frame: the gateway's own fields (NDJSON lines are ours)
            return {"frame": o.index, "time": o.time, **entry}
        return entry

    def video(
        self, call: Call, entries: list[dict[str, Any]], video: dict[str, Any], error: GatewayError | None
    ) -> dict[str, Any]:
        body = self._with_warning(call, {"images": entries, "metadata": self.metadata(call, len(entries))})
        if call.args.details:
            body["metadata"]["video"] = video
        return {**self.failure(error.message), **body} if error is not None else body

    def end_line(self, call: Call, video: dict[str, Any], analysed: int, error: GatewayError | None) -> dict[str, Any]:
        line: dict[str, Any] = {"done": True, "success": error is None}
        if error is not None:
            line["status"] = self.status(error)
        line["message"] = error.message if error else f"Inference complete for {analysed} frame(s)."
        return line | {"metadata": {**self.metadata(call, analysed), "video": video}}


class HubImages(Images):
    """The HUB v1 URL with the newer body: a `file` part, imgsz, conf, iou (HUB defaults: iou 0.45)."""

    name = "hub-images"
    title = "HUB v1 URL with the newer body (file, imgsz, conf, iou), answered as {images, metadata}"

    def documented(self, call: Call, count: int) -> dict[str, Any]:
        return {**super().documented(call, count), "model": call.info.name}


class Predict(Images):
    """predict.ultralytics.com: `POST /` with `model` (a HUB model URL), a `file` part, imgsz, conf, iou (0.45);
    its dedicated endpoints take no `model` (the base URL or the key names it). `metadata.model` echoes the field."""

    name = "predict"
    title = "predict.ultralytics.com, shared (model=<HUB model URL>) and dedicated (the base URL or key names it)"
    part = "file"


class Platform(Images):
    """The Ultralytics Platform: `POST /api/models/{owner}/{project}/{model}/predict` with `Authorization: Bearer`,
    exactly one of `file`/`source`, YOLO.predict's defaults (iou 0.7)."""

    name = "platform"
    title = "Ultralytics Platform: /api/models/{owner}/{project}/{model}/predict, Bearer key, {error} bodies"
    family = "platform"
    part = "file"
    key_header = "Authorization: Bearer"
    iou = IOU_DEFAULT["platform"]
    missing = "Send exactly one of 'file' (an image or video file part) or 'source' (an image URL or base64 image)."

    def documented(self, call: Call, count: int) -> dict[str, Any]:
        info = call.info
        return {
            "imageCount": count,
            "functionTimeAlive": alive_s(),
            "functionTimeCall": call.seconds(),
            "task": info.task,  # the `ul` CLI stops without it
            "version": versions(info),
            "model": info.name,
            "classNames": [info.names.get(i, str(i)) for i in range(len(info.names))],
        }

    def status(self, exc: GatewayError) -> int:
        return 400 if exc.status in (415, 422) else exc.status  # "Invalid image" is a 400 there

    def failure(self, message: str) -> dict[str, Any]:
        return {"error": message}

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        body = self.failure(exc.message)
        if isinstance(exc, TooManyRequests):
            body |= {"retryAfter": retry_after_s(exc), "resetAt": iso8601(time.time() + reset_after_s(exc))}
        return body

    def error_headers(self, exc: GatewayError) -> dict[str, str]:
        headers = super().error_headers(exc)
        if "WWW-Authenticate" in headers:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def reset(self, seconds: float) -> str:
        return iso8601(time.time() + seconds)
