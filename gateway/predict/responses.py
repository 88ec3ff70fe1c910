"""Every answer the gateway gives to a prediction, images and videos, shaped by the request's dialect
(gateway/dialects/): this module holds what all dialects add alike, the headers, and hands the rest to the dialect.

The rows themselves are Ultralytics' `Results.summary()`, made by `postprocess.summary`; the flows (images.py and
video.py in this package) produce the outcomes.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects import Call, Dialect, FrameOutcome, Outcome
from gateway.errors import GatewayError
from gateway.modelcard import UNTRAINED_WARNING, ModelInfo
from gateway.vision.videoreader import Reader

__all__ = ["WARNING_HEADER", "FrameOutcome", "Outcome", "headers", "server_timing", "video_meta"]

# The header that carries a model's UNTRAINED_WARNING on every prediction, in every dialect.
WARNING_HEADER = "X-Model-Warning"


def server_timing(timings: dict[str, float]) -> str:
    """The `Server-Timing` header: each stage's milliseconds."""
    return ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())


def headers(info: ModelInfo, timings: dict[str, float]) -> dict[str, str]:
    """A successful prediction's headers: `Server-Timing`, and the warning for untrained models."""
    out = {"Server-Timing": server_timing(timings)}
    if info.untrained:
        out[WARNING_HEADER] = UNTRAINED_WARNING
    return out


def video_meta(reader: Reader) -> dict[str, Any]:
    """What a video's answer says of it: the container's figures and the frames analysed."""
    return {**reader.meta.public(), "frames": reader.analysed}


def video_body(
    dialect: Dialect, call: Call, outcomes: list[FrameOutcome], reader: Reader, error: GatewayError | None
) -> dict[str, Any]:
    """The whole answer to a video (`error`: it broke off partway; the frames read are kept)."""
    return dialect.video(call, [dialect.frame(call, o) for o in outcomes], video_meta(reader), error)
