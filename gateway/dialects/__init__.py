"""The dialects of Ultralytics' inference APIs (issue #29): what each route, key or base path speaks, and the two
ends where they differ (reading a request into one `PredictArgs`; shaping outcomes and errors as its JSON).

    hub          HUB v1, first docs: `image` parts, size/confidence/iou (0.45), Results.summary() rows in
                 {success, message, data}; X-RateLimit-Reset a Unix timestamp (hub-sdk reads it so)
    hub-xywhn    HUB v1, later docs: the same request; rows always normalized, full floats: xcenter/ycenter/width/
                 height, or `segment`, `keypoints`, `obb` as flat lists
    hub-images   the HUB v1 URL with the newer body: a `file` part, imgsz/conf/iou (0.45); {images, metadata}
    predict      predict.ultralytics.com: POST / with model=<HUB model URL>, file, imgsz/conf/iou (0.45);
                 {images, metadata} with functionTimeAlive/Call, imageCount, model (the URL sent), version
    platform     the Ultralytics Platform: /api/models/{owner}/{project}/{model}/predict, Bearer key, file or source,
                 iou 0.7; metadata as its contract (task, classNames, ...); {"error"} bodies, 415/422 → 400,
                 429 with retryAfter/resetAt and X-RateLimit-Reset in ISO 8601

base.py holds what they share (and the HUB's conventions as defaults), hub.py the envelope dialects, images.py the
{images, metadata} ones, choice.py which one answers a request.
"""

from __future__ import annotations

from gateway.dialects.base import Call, Dialect, FrameOutcome, Outcome
from gateway.dialects.choice import DIALECTS, PLATFORM, PREDICT, V1, Door, choose, first, for_path, pinned

__all__ = [
    "DIALECTS", "PLATFORM", "PREDICT", "V1", "Call", "Dialect", "Door", "FrameOutcome", "Outcome", "choose", "first",
    "for_path", "pinned",
]  # fmt: skip
