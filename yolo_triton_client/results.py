"""Typed results: the rows of Ultralytics' `Results.summary()` as dataclasses, with the raw JSON kept beside them.

Coordinates are image pixels, or fractions of the width/height when the request had `normalize=true`
(`Prediction.normalized`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from yolo_triton_client.errors import ApiError, api_error

Task = Literal["detect", "segment", "pose", "obb", "classify"]


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass(frozen=True)
class OrientedBox:
    """Four corners in Ultralytics' `xyxyxyxy` order."""

    x1: float
    y1: float
    x2: float
    y2: float
    x3: float
    y3: float
    x4: float
    y4: float

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(self.x1, self.y1), (self.x2, self.y2), (self.x3, self.y3), (self.x4, self.y4)]

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """The axis-aligned box around the corners."""
        xs, ys = (self.x1, self.x2, self.x3, self.x4), (self.y1, self.y2, self.y3, self.y4)
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Polygon:
    """A mask outline (Ultralytics' `masks.xy`: all contours of the mask merged into one)."""

    x: list[float]
    y: list[float]

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(zip(self.x, self.y, strict=True))


@dataclass(frozen=True)
class Keypoints:
    """One skeleton; `visible` is each keypoint's confidence (None when the model has no visibility output)."""

    x: list[float]
    y: list[float]
    visible: list[float] | None = None


@dataclass(frozen=True)
class Detection:
    name: str
    class_id: int
    confidence: float
    box: Box | OrientedBox
    segments: Polygon | None = None
    keypoints: Keypoints | None = None


@dataclass(frozen=True)
class Classification:
    name: str
    class_id: int
    confidence: float


Row: TypeAlias = Detection | Classification


@dataclass(frozen=True)
class Speed:
    """Milliseconds per stage, as reported by the server."""

    preprocess: float | None = None
    inference: float | None = None
    postprocess: float | None = None


@dataclass(frozen=True)
class Prediction:
    """The result for one image. `raw` is the JSON it was read from: the whole v1 body, or one `images` entry."""

    model: str
    rows: list[Row]
    raw: dict[str, Any] = field(repr=False)
    shape: tuple[int, int] | None = None  # (height, width) as the server decoded the image, when known
    normalized: bool = False
    speed: Speed | None = None

    @property
    def detections(self) -> list[Detection]:
        return [r for r in self.rows if isinstance(r, Detection)]

    @property
    def classifications(self) -> list[Classification]:
        return [r for r in self.rows if isinstance(r, Classification)]

    @property
    def task(self) -> Task | None:
        """Told from the rows' fields; None when there are no rows (the v1 answer does not name the task)."""
        return row_task(self.raw_rows[0]) if self.raw_rows else None

    @property
    def raw_rows(self) -> list[dict[str, Any]]:
        rows = self.raw.get("data", self.raw.get("results", []))
        return rows if isinstance(rows, list) else []

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


@dataclass(frozen=True)
class FramePrediction(Prediction):
    """One video frame's result: `frame` is its index in the source video (0-based), `time` its timestamp in
    seconds (frame / fps; None when the video does not state its frame rate). `raw` is the frame's entry."""

    frame: int = 0
    time: float | None = None


@dataclass(frozen=True)
class VideoPrediction:
    """A whole video's result: one FramePrediction per analysed frame, and the video's metadata as the server read
    it (`container`, `width`, `height`, `fps`, `frame_count`, `duration`, `vid_stride`, `frames`)."""

    model: str
    frames: list[FramePrediction]
    video: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[FramePrediction]:
        return iter(self.frames)


def row_task(row: Mapping[str, Any]) -> Task:
    if "keypoints" in row:
        return "pose"
    if "segments" in row:
        return "segment"
    box = row.get("box")
    if box is None:
        return "classify"
    return "obb" if "x3" in box else "detect"


def parse_row(row: Mapping[str, Any]) -> Row:
    """One `summary()` row as a typed Detection or Classification."""
    name, class_id, confidence = str(row["name"]), int(row["class"]), float(row["confidence"])
    box = row.get("box")
    if box is None:
        return Classification(name, class_id, confidence)
    fields = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4") if "x3" in box else ("x1", "y1", "x2", "y2")
    values = [float(box[k]) for k in fields]
    typed_box: Box | OrientedBox = OrientedBox(*values) if len(values) == 8 else Box(*values)
    segments = row.get("segments")
    keypoints = row.get("keypoints")
    return Detection(
        name,
        class_id,
        confidence,
        typed_box,
        Polygon(_floats(segments["x"]), _floats(segments["y"])) if segments is not None else None,
        Keypoints(
            _floats(keypoints["x"]),
            _floats(keypoints["y"]),
            _floats(keypoints["visible"]) if "visible" in keypoints else None,
        )
        if keypoints is not None
        else None,
    )


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def prediction_from_v1(model: str, body: dict[str, Any], shape: tuple[int, int] | None, normalized: bool) -> Prediction:
    """A Prediction from the `/v1/predict` body `{"success", "message", "data": [rows]}`."""
    return Prediction(model, [parse_row(r) for r in body.get("data") or []], body, shape, normalized)


def predictions_from_batch(model: str, body: dict[str, Any], normalized: bool) -> list[Prediction | ApiError]:
    """One Prediction, or an ApiError for an image the server refused, per entry of the batch answer's `images`."""
    metadata = body.get("metadata") or {}
    model = str(metadata.get("model") or model)
    normalized = bool(metadata.get("normalize", normalized))
    out: list[Prediction | ApiError] = []
    for image in body.get("images") or []:
        error = image.get("error")
        if error:
            out.append(api_error(int(error.get("status", 0)), str(error.get("message", "")), body=image))
            continue
        shape = image.get("shape")
        speed = image.get("speed") or {}
        out.append(
            Prediction(
                model,
                [parse_row(r) for r in image.get("results") or []],
                image,
                (int(shape[0]), int(shape[1])) if shape else None,
                normalized,
                Speed(speed.get("preprocess"), speed.get("inference"), speed.get("postprocess")),
            )
        )
    return out


def frame_from_entry(model: str, entry: dict[str, Any], normalized: bool) -> FramePrediction:
    """A FramePrediction from one frame's `images` entry (or NDJSON line) of the newer API's answer."""
    shape = entry.get("shape")
    speed = entry.get("speed") or {}
    time = entry.get("time")
    return FramePrediction(
        model,
        [parse_row(r) for r in entry.get("results") or []],
        entry,
        (int(shape[0]), int(shape[1])) if shape else None,
        normalized,
        Speed(speed.get("preprocess"), speed.get("inference"), speed.get("postprocess")),
        int(entry.get("frame", 0)),
        float(time) if time is not None else None,
    )


def video_from_body(model: str, body: dict[str, Any], normalized: bool) -> VideoPrediction:
    """A VideoPrediction from the newer API's answer to a video: `images` per frame, `metadata.video`."""
    metadata = body.get("metadata") or {}
    model = str(metadata.get("model") or model)
    frames = [frame_from_entry(model, e, normalized) for e in body.get("images") or []]
    return VideoPrediction(model, frames, dict(metadata.get("video") or {}), body)
