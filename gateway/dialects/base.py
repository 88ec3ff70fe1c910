"""What every dialect shares: the outcomes it shapes, the call they belong to, and the `Dialect` itself with the
HUB's conventions as its defaults (the envelope for errors, `X-RateLimit-Reset` as a Unix timestamp).

A dialect differs from the others only at its two ends: how a request's fields become one `PredictArgs` (`parse`),
and how outcomes, video frames and errors become its JSON (`answer`, `frame`, `video`, `end_line`, `error_response`).
Everything between (decoding, Triton, post-processing) is the same for all of them.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from starlette.responses import Response

from gateway.arguments import IOU_DEFAULT, DialectName, PredictArgs, parse_args
from gateway.errors import GatewayError, envelope, json_response
from gateway.keys.ratelimit import Quota
from gateway.modelcard import ModelInfo

DONE = "Inference complete."
RESET = "X-RateLimit-Reset"
RETRY = "Retry-After"
# The process' start (the gateway imports its modules at start-up): the newer answers' `functionTimeAlive`.
STARTED = time.monotonic()
# The packages the newer answers' `version` names: those that exported the model (the model card's `built_with`).
BUILT_WITH = ("python", "torch", "torchvision", "ultralytics")


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


@dataclass(frozen=True)
class Call:
    """What an answer says besides its rows: the model, the arguments as parsed, when the request arrived
    (time.perf_counter(); None: not known) and the model as the client named it (a `model` field, e.g. a HUB URL)."""

    info: ModelInfo
    args: PredictArgs
    started: float | None = None
    model: str = ""

    def seconds(self) -> float:
        """Seconds since the request arrived (0 when unknown)."""
        return round(time.perf_counter() - self.started, 6) if self.started is not None else 0.0


def alive_s() -> float:
    """Seconds this gateway process has been up."""
    return round(time.monotonic() - STARTED, 3)


def versions(info: ModelInfo) -> dict[str, str]:
    """What exported the model, named as the newer answers name it; "unknown" where its config does not say (a
    model exported before the versions were recorded). The gateway itself runs neither torch nor Ultralytics."""
    return {name: info.built_with.get(name, "unknown") for name in BUILT_WITH}


def speed_ms(speed: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in speed.items()}


def retry_after_s(exc: GatewayError) -> int:
    """The error's Retry-After in seconds (1 when it has none)."""
    text = exc.headers.get(RETRY, "1")
    return int(text) if text.isdigit() else 1


def reset_after_s(exc: GatewayError) -> float:
    """Seconds until the key's bucket is full again, as the error's X-RateLimit-Reset says (or its Retry-After).
    The header holds seconds until here: the dialect writes it in its own format (`Dialect.reset`)."""
    text = exc.headers.get(RESET, "")
    return float(text) if text.isdigit() else float(retry_after_s(exc))


def iso8601(epoch_s: float) -> str:
    """`2026-02-21T12:34:56.000Z`, the next whole second from `epoch_s`: the Platform's way to write a reset time."""
    moment = datetime.datetime.fromtimestamp(math.ceil(epoch_s), tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Dialect:
    """One dialect's two ends. The defaults are the HUB's: `image` parts, IoU 0.45, the `{success, message, data}`
    envelope for errors, and X-RateLimit-Reset as a Unix timestamp (what hub-sdk reads)."""

    name: ClassVar[DialectName]
    title: ClassVar[str]  # what it is, in a few words (README, the keys CLI's help)
    family: ClassVar[str] = "hub"  # "hub" or "platform": error bodies, the reset header, where keys go
    part: ClassVar[str] = "image"  # the file part its documentation names (said in messages)
    key_header: ClassVar[str] = "x-api-key"  # the header its documentation puts the key in
    iou: ClassVar[float] = IOU_DEFAULT["hub"]
    size: ClassVar[int | None] = None  # the default inference size; None: the model's own (its `default_size`)
    missing: ClassVar[str] = "An image file or URL must be submitted."  # the HUB's own words

    def parse(self, fields: Mapping[str, str], default_size: int) -> PredictArgs:
        """The request's arguments with this dialect's defaults (`default_size`: the model's)."""
        return parse_args(fields, self.size or default_size, self.iou)

    # -- answers ---------------------------------------------------------------------------------------------------

    def rows(self, call: Call, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One image's rows as this dialect writes them (from `Results.summary()` rows)."""
        return rows

    def answer(self, call: Call, outcomes: list[Outcome]) -> dict[str, Any]:
        """The body for the outcomes of one request for images (at least one succeeded)."""
        raise NotImplementedError

    def frame(self, call: Call, o: FrameOutcome) -> dict[str, Any]:
        """One video frame's entry (in the whole answer, or one NDJSON line)."""
        raise NotImplementedError

    def video(
        self, call: Call, entries: list[dict[str, Any]], video: dict[str, Any], error: GatewayError | None
    ) -> dict[str, Any]:
        """A whole video's answer; `error`: the video broke off (the frames read are kept)."""
        raise NotImplementedError

    def end_line(self, call: Call, video: dict[str, Any], analysed: int, error: GatewayError | None) -> dict[str, Any]:
        """A streamed video's last line: `done`, and whether it was read whole or the error that ended it."""
        raise NotImplementedError

    # -- errors and limits -----------------------------------------------------------------------------------------

    def status(self, exc: GatewayError) -> int:
        return exc.status

    def failure(self, message: str) -> dict[str, Any]:
        """The keys that say a request failed, and why."""
        return {"success": False, "message": message}

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        return envelope(exc.message, {}, success=False)

    def error_headers(self, exc: GatewayError) -> dict[str, str]:
        headers = dict(exc.headers)
        if RESET in headers:
            headers[RESET] = self.reset(reset_after_s(exc))
        return headers

    def error_response(self, exc: GatewayError) -> Response:
        return json_response(self.error_body(exc), self.status(exc), self.error_headers(exc))

    def reset(self, seconds: float) -> str:
        """X-RateLimit-Reset for a bucket full again in `seconds`: here the Unix time of that moment."""
        return str(math.ceil(time.time() + seconds))

    def rate_headers(self, quota: Quota) -> dict[str, str]:
        """The X-RateLimit-* headers of a request that was let through."""
        return {**quota.headers(), RESET: self.reset(quota.reset_s)}
